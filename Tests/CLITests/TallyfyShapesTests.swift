import Foundation
import Testing

/// The emulator answering as Tallyfy really does (issue 13), and the vault
/// coping with it: Tallyfy's error shapes and statuses,
/// its rate-limit headers, its token URLs, its tools as the vault's
/// children, the `apiKeyHelper` bound, `doctor`; and one deadline for the
/// whole HTTP exchange (issue 9). The real binary against the real emulator.
@Suite("Tallyfy's shapes, on the emulator")
struct TallyfyShapesTests {
    /// Shaped like Tallyfy's: a 32-hex organization and a numeric client.
    static let org = "5e1d0c2b3a4f69788796a5b4c3d2e1f0"
    static let clientID = "40213"

    typealias World = TallyfyFlowTests.World

    static func world(org profileOrg: String = org, tokenURL: String? = nil) async throws -> World {
        let secret = "cs-\(UUID().uuidString)"
        let emulator = try await Emulator.start(orgs: [org], clients: [(clientID, secret)])
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        let stored = try sandbox.ok(["credentials", "set", "--org", profileOrg, "--client-id", clientID, "--secret-stdin",
                                     "--token-url", tokenURL ?? emulator.tokenURL, "--api-url", emulator.apiURL],
                                    stdin: secret + "\n")
        // Real-looking IDs draw no warning.
        #expect(profileOrg != org || !stored.stderr.contains("warning"), "\(stored.stderr)")
        return World(emulator: emulator, sandbox: sandbox, secret: secret, storedSecret: secret)
    }

    // MARK: - One deadline for the whole exchange (issue 9)

    /// A server that answers at once and then sends its body one byte a
    /// second held `TALLYFY_VAULT_HTTP_TIMEOUT=3` for 72 s; now each attempt
    /// ends after 3 s, and the whole call after 3 × 3 s.
    @Test func aTricklingBodyIsCutAtTheDeadline() async throws {
        let world = try await Self.world()
        defer { world.emulator.stop() }
        try await world.emulator.inject(["endpoint": "token", "kind": "trickle", "delayMs": 1000])
        let started = Date()
        let result = try world.refused(["login"], status: 69, env: ["TALLYFY_VAULT_HTTP_TIMEOUT": "3"])
        let elapsed = Date().timeIntervalSince(started)
        #expect(elapsed < 12, "the call took \(elapsed) s; the bound is 3 × 3 s")
        #expect(elapsed >= 2.5, "it gave up before the deadline (\(elapsed) s)")
        #expect(result.stderr.contains("no answer within 3 s"), "\(result.stderr)")
    }

    /// The same server does not hold the vault lock past the bound: a
    /// concurrent writer waits less than the lock timeout.
    @Test func aTricklingServerDoesNotStarveAConcurrentWriter() async throws {
        let world = try await Self.world()
        defer { world.emulator.stop() }
        try await world.emulator.inject(["endpoint": "token", "kind": "trickle", "delayMs": 1000, "times": 1])
        try await world.emulator.inject(["endpoint": "token", "kind": "trickle", "delayMs": 1000, "times": 1])
        try await world.emulator.inject(["endpoint": "token", "kind": "trickle", "delayMs": 1000, "times": 1])
        let sandbox = world.sandbox
        let slowLogin = Task.detached {
            try sandbox.run(["login"], env: ["TALLYFY_VAULT_HTTP_TIMEOUT": "2"])
        }
        // Wait until the slow login is inside the token request (it holds the lock).
        #expect(await eventually(seconds: 20) { (try? await world.counts()["token"]) ?? 0 >= 1 })
        let writer = try world.sandbox.run(["credentials", "set", "--org", Self.org, "--client-id", Self.clientID,
                                            "--secret-stdin", "--token-url", world.emulator.tokenURL,
                                            "--api-url", world.emulator.apiURL],
                                           stdin: world.secret, env: ["TALLYFY_VAULT_LOCK_TIMEOUT": "10"])
        #expect(writer.status == 0, "\(writer.brief)")
        let slow = try await slowLogin.value
        #expect(slow.status == 69, "\(slow.brief)")
    }

    // MARK: - Error bodies

    /// The real API answers an organization the client does not belong to
    /// with 403 and a message; the vault shows it, with the request ID.
    @Test func unknownOrganizationIs403WithTallyfysMessage() async throws {
        let world = try await Self.world(org: "0123456789abcdef0123456789abcdef")
        defer { world.emulator.stop() }
        try world.sandbox.ok(["login"])
        let result = try world.refused(["users", "create", "--email", "a@example.com", "--first-name", "A",
                                        "--last-name", "B"], status: 77)
        #expect(result.stderr.contains("You don't have application's permissions for this organization!"), "\(result.stderr)")
        #expect(result.stderr.contains("(request ID "), "\(result.stderr)")
        #expect(result.stderr.contains("tallyfy-vault: hint: "))
    }

    @Test func duplicateUserIsA422ReportedAsExisting() async throws {
        let world = try await Self.world()
        defer { world.emulator.stop() }
        try world.sandbox.ok(["login"])
        let create = ["users", "create", "--email", "dup@example.com", "--first-name", "D", "--last-name", "Up"]
        try world.sandbox.ok(create)
        let duplicate = try world.refused(create, status: 64)
        #expect(duplicate.stderr.contains("already exists"))
        #expect(duplicate.stderr.contains("users token dup@example.com"))

        let url = try world.refused(["users", "create", "--email", "u@example.com", "--first-name", "https://x.example",
                                     "--last-name", "L"], status: 64)
        #expect(url.stderr.contains("URL"))
    }

    /// 429 with Tallyfy's headers: exit 75, the reset time, the quota and
    /// the server's message.
    @Test func rateLimitReportsTheResetTime() async throws {
        let world = try await Self.world()
        defer { world.emulator.stop() }
        try await world.emulator.inject(["endpoint": "token", "kind": "rate-limit", "retryAfter": 3600])
        let result = try world.refused(["login"], status: 75)
        #expect(result.stderr.contains("try again after 20"), "\(result.stderr)")
        #expect(result.stderr.contains("0 of 600 requests left"), "\(result.stderr)")
        #expect(result.stderr.contains("You've reached the limit"), "\(result.stderr)")
        #expect(try await world.counts()["token"] == 1)
    }

    // MARK: - The token URL

    /// A token URL that is not one (404) says which URLs Tallyfy documents
    /// and how to set one, instead of a bare "unreachable".
    @Test func aWrongTokenURLNamesTheDocumentedOnes() async throws {
        let secret = "cs-\(UUID().uuidString)"
        let emulator = try await Emulator.start(orgs: [Self.org], clients: [(Self.clientID, secret)])
        defer { emulator.stop() }
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        try sandbox.ok(["credentials", "set", "--org", Self.org, "--client-id", Self.clientID, "--secret-stdin",
                        "--token-url", emulator.baseURL + "/api/oauth/token", "--api-url", emulator.apiURL], stdin: secret)
        let result = try sandbox.refused(["login"], status: 78)
        #expect(result.stderr.contains("is not an OAuth token endpoint"), "\(result.stderr)")
        #expect(result.stderr.contains("https://account.tallyfy.com/oauth/token"))
        #expect(result.stderr.contains("https://go.tallyfy.com/oauth/token"))
        #expect(result.stderr.contains("--token-url"))
        #expect(!result.stderr.contains(secret))
    }

    /// `--token-url discover` tries the documented URLs in order, asking
    /// each without the secret, and stores the first token endpoint. (Debug
    /// builds let the test replace the documented list with emulator URLs.)
    @Test func discoverFindsTheFirstTokenEndpointWithoutSendingTheSecret() async throws {
        let secret = "cs-\(UUID().uuidString)"
        let emulator = try await Emulator.start(orgs: [Self.org], clients: [(Self.clientID, secret)])
        defer { emulator.stop() }
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        let candidates = [emulator.baseURL + "/oauth/authorize", emulator.baseURL + "/api/oauth/token", emulator.tokenURL]
        let set = ["credentials", "set", "--org", Self.org, "--client-id", Self.clientID, "--secret-stdin",
                   "--token-url", "discover", "--api-url", emulator.apiURL]
        let stored = try sandbox.ok(set, stdin: secret,
                                    env: ["TALLYFY_VAULT_TEST_TOKEN_URLS": candidates.joined(separator: ",")])
        #expect(stored.stderr.contains("\(emulator.tokenURL) answers as an OAuth token endpoint"), "\(stored.stderr)")
        #expect(try sandbox.ok(["credentials", "show"]).stdout.contains(emulator.tokenURL))
        // Probes name no client: the emulator never saw a client ID, let alone the secret.
        #expect(try await emulator.counts()["token"] == 1)
        try sandbox.ok(["login"])

        // None answers: 69, and nothing changes.
        let none = try sandbox.refused(set, status: 69, stdin: secret,
                                       env: ["TALLYFY_VAULT_TEST_TOKEN_URLS": candidates.dropLast().joined(separator: ",")])
        #expect(none.stderr.contains("none of Tallyfy's documented token URLs"), "\(none.stderr)")
        #expect(none.stderr.contains("404 Not Found"))
    }

    @Test func oddIdentifiersAreStoredWithAWarning() throws {
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        let result = try sandbox.ok(["credentials", "set", "--org", "org-1", "--client-id", "client-abc", "--secret-stdin"],
                                    stdin: "s")
        #expect(result.stderr.contains("tallyfy-vault: warning: organization ID \"org-1\" is not 32 hexadecimal characters"))
        #expect(result.stderr.contains("tallyfy-vault: warning: client ID \"client-abc\" is not a number"))
        #expect(result.stderr.contains("tallyfy-vault: hint: "))
    }

    /// The application token acts as no user: `exec --help` says so and
    /// points to `--user`.
    @Test func execHelpPointsToUserTokens() throws {
        let sandbox = try Sandbox()
        let help = try sandbox.ok(["exec", "--help"])
        #expect(help.stdout.contains("--user EMAIL"), "\(help.stdout)")
        #expect(help.stdout.contains("TALLYFY_BASE_URL"))
    }

    // MARK: - apiKeyHelper

    /// Tallyfy's CLI kills its helper after 10 s: with Tallyfy hanging, the
    /// helper answers within its 5 s bound with the sealed token.
    @Test func helperAnswersWithinItsBoundWhenTallyfyHangs() async throws {
        let world = try await Self.world()
        defer { world.emulator.stop() }
        try world.sandbox.ok(["login"])
        let sealed = try world.sandbox.ok(["token", "--no-refresh"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try await world.emulator.inject(["endpoint": "token", "kind": "delay", "delayMs": 60_000])

        let started = Date()
        // --min-ttl 8d: the 7-day token must be renewed, and Tallyfy hangs.
        let result = try world.sandbox.run(["token", "--format", "helper", "--min-ttl", "8d"])
        let elapsed = Date().timeIntervalSince(started)
        #expect(result.status == 0, "\(result.brief)")
        #expect(elapsed < 9.5, "the helper took \(elapsed) s; Tallyfy's CLI kills it at 10 s")
        let answer = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(answer["token"] as? String == sealed)
        #expect((answer["expiresInSeconds"] as? Int ?? 0) > 600_000)
        #expect(result.stderr.hasPrefix("tallyfy-vault: warning: "), "\(result.stderr)")
        #expect(!result.stderr.contains(sealed))
    }

    @Test func helperFallsBackWhenRenewalFailsAndNeverPrompts() async throws {
        let world = try await Self.world()
        defer { world.emulator.stop() }
        try world.sandbox.ok(["login"])
        let sealed = try world.sandbox.ok(["token", "--no-refresh"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try await world.emulator.inject(["endpoint": "token", "kind": "status", "status": 503])
        let failed = try world.sandbox.run(["token", "--format", "helper", "--min-ttl", "8d"])
        #expect(failed.status == 0, "\(failed.brief)")
        #expect(failed.stdout.contains(sealed))
        #expect(failed.stderr.contains("503"))

        // No unlock source: an error at once, never a prompt.
        let noKey = try world.sandbox.refused(["token", "--format", "helper"], status: 78,
                                              env: ["TALLYFY_VAULT_KEY_FILE": ""])
        #expect(noKey.stderr.contains("never prompts"))
    }

    // MARK: - doctor

    @Test func doctorReportsAHealthySetUpAndThenEachProblem() async throws {
        let world = try await Self.world()
        defer { world.emulator.stop() }
        try world.sandbox.ok(["login"])
        try world.sandbox.ok(["users", "create", "--email", "ada@example.com", "--first-name", "Ada", "--last-name", "L"])
        try world.sandbox.ok(["users", "token", "ada@example.com"])
        let path = ["PATH": BuildProducts.directory.path + ":/usr/bin:/bin"]
        try await world.emulator.reset()

        let healthy = try world.sandbox.run(["doctor"], env: path)
        #expect(healthy.status == 0, "\(healthy.stdout)\n\(healthy.stderr)")
        #expect(healthy.stdout.contains("OK    profile default: token URL"), "\(healthy.stdout)")
        #expect(healthy.stdout.contains("acts as \"ada@example.com\""), "\(healthy.stdout)")
        #expect(healthy.stdout.contains("OK    agent") && healthy.stdout.contains("none running on"), "\(healthy.stdout)")
        // No secret was sent: the probe names no client, and /me used the user token.
        #expect(try await world.counts() == ["token": 1, "users.create": 0, "users.token": 0, "users.list": 0, "me": 1])
        #expect(!healthy.stdout.contains(world.secret) && !healthy.stdout.contains("eyJ"))

        let json = try world.sandbox.run(["doctor", "--format", "json", "--login"], env: path)
        #expect(json.status == 0)
        let report = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect(report["status"] as? String == "OK")
        let checks = try #require(report["checks"] as? [[String: Any]])
        #expect(checks.contains { $0["check"] as? String == "profile default: login" && $0["status"] as? String == "OK" })
        #expect(!json.stdout.contains(world.secret) && !json.stdout.contains("eyJ") && !json.stderr.contains("eyJ"))

        // Without a key: never a prompt; the expiries still come from the clear summary.
        let keyless = try world.sandbox.run(["doctor"], env: path.merging(["TALLYFY_VAULT_KEY_FILE": ""]) { $1 })
        #expect(keyless.status == 1, "\(keyless.stdout)")
        #expect(keyless.stdout.contains("WARN  unlock sources"), "\(keyless.stdout)")
        #expect(keyless.stdout.contains("OK    profile default: application token"), "\(keyless.stdout)")

        // A wrong token URL fails, with the hint; odd IDs warn.
        try world.sandbox.ok(["credentials", "set", "--org", "org-x", "--client-id", "c", "--secret-stdin",
                              "--token-url", world.emulator.baseURL + "/nope", "--api-url", world.emulator.apiURL],
                             stdin: world.secret)
        let broken = try world.sandbox.run(["doctor"], env: path)
        #expect(broken.status == 2, "\(broken.stdout)")
        #expect(broken.stdout.contains("FAIL  profile default: token URL"), "\(broken.stdout)")
        #expect(broken.stdout.contains("hint: the token URL may be wrong"), "\(broken.stdout)")
        #expect(broken.stdout.contains("WARN  profile default: credentials"), "\(broken.stdout)")

        // Unsafe permissions fail without unlocking anything.
        chmod(world.sandbox.vaultPath, 0o644)
        let open = try world.sandbox.run(["doctor"], env: path)
        #expect(open.status == 2)
        #expect(open.stdout.contains("FAIL  vault file"), "\(open.stdout)")
    }
}

import Foundation
import Testing

/// End-to-end tests of the Tallyfy flow: the real `tallyfy-vault` binary
/// against the real `tallyfy-emulator`, each test with its own emulator
/// (random client secret) and its own sandbox, so they run in parallel.
/// Every test runs twice: on a vault file and on a vault on etcd (the shared
/// test cluster, one key prefix per test).
@Suite("Tallyfy flow")
struct TallyfyFlowTests {
    static let org = "org-test"
    static let clientID = "client-test"

    /// One test's world: an emulator, a sandbox whose vault holds credentials
    /// for it, and the secret the emulator accepts.
    struct World {
        let emulator: Emulator
        let sandbox: Sandbox
        /// The secret the emulator accepts for `clientID`.
        let secret: String
        /// The secret stored in the vault (the same unless a test wants a wrong one).
        let storedSecret: String

        /// Every secret a failure message must never show.
        var secrets: [String] { [secret, storedSecret] }

        func counts() async throws -> [String: Int] { try await emulator.counts() }

        /// `GET /api/organizations/{org}/me` with `token`.
        func me(_ token: String) async throws -> Emulator.Reply {
            try await emulator.send(.GET, "/api/organizations/\(TallyfyFlowTests.org)/me", headers: [
                "X-Tallyfy-Client": "APIClient", "Accept": "application/json", "Authorization": "Bearer \(token)",
            ])
        }

        /// Runs a command that must fail with `status`, leave the vault
        /// byte-for-byte unchanged, and print a clean message: the
        /// `tallyfy-vault: ` prefix, no secret and no token.
        @discardableResult
        func refused(_ arguments: [String], status: Int32, env: [String: String] = [:],
                     sourceLocation: SourceLocation = #_sourceLocation) throws -> RunResult {
            let result = try sandbox.refused(arguments, status: status, env: env, sourceLocation: sourceLocation)
            TallyfyFlowTests.expectNoLeak(result, secrets: secrets, sourceLocation: sourceLocation)
            return result
        }
    }

    /// Starts an emulator that accepts `client-test` with a random secret and
    /// a sandbox whose default profile points at it (the secret on stdin).
    static func world(vault: VaultKind, storedSecret: String? = nil, appTokenTTL: Int? = nil, userTokenTTL: Int? = nil) async throws -> World {
        let secret = "cs-\(UUID().uuidString)"
        let stored = storedSecret ?? secret
        let world = try await LoggedIn.start(
            secrets: [secret], stored: stored, client: clientID, org: org, appTokenTTL: appTokenTTL, userTokenTTL: userTokenTTL,
            login: false, vault: vault)
        return World(emulator: world.emulator, sandbox: world.sandbox, secret: secret, storedSecret: stored)
    }

    /// A failure's output never carries a secret or anything that looks like
    /// a JWT (`sandbox.refused` already checks the `tallyfy-vault: ` prefix).
    static func expectNoLeak(_ result: RunResult, secrets: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        for secret in secrets {
            #expect(!result.stderr.contains(secret), "stderr shows the client secret", sourceLocation: sourceLocation)
            #expect(!result.stdout.contains(secret), "stdout shows the client secret", sourceLocation: sourceLocation)
        }
        #expect(!result.stderr.contains("eyJ"), "stderr shows a token: \(result.stderr)", sourceLocation: sourceLocation)
    }

    static let zeroCounts = ["token": 0, "users.create": 0, "users.token": 0, "users.list": 0, "me": 0]

    static func line(_ result: RunResult) -> String {
        result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func isJWT(_ text: String) -> Bool {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 3 && parts.allSatisfy { !$0.isEmpty } && text.hasPrefix("eyJ")
    }

    // MARK: - The happy path

    @Test(arguments: VaultKind.allCases) func loginTokenFormatsAndUserTokens(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox

        // Bounds from the clock around the runs, not fixed tolerances: a
        // loaded CI machine may take many seconds between two commands.
        let loginStarted = Date()
        func plausibleLeft(_ seconds: Int) -> Bool {
            let elapsed = Int(Date().timeIntervalSince(loginStarted).rounded(.up)) + 1
            return (604_800 - elapsed...604_800).contains(seconds)
        }
        let login = try sandbox.ok(["login"])
        #expect(login.stderr.hasPrefix("tallyfy-vault: sealed a new application token"))
        #expect(!login.stderr.contains("eyJ") && login.stdout.isEmpty)
        #expect(try await world.counts() == ["token": 1, "users.create": 0, "users.token": 0, "users.list": 0, "me": 0])

        // raw: one JWT on one line.
        let raw = try sandbox.ok(["token"])
        let appToken = Self.line(raw)
        #expect(Self.isJWT(appToken), "not a JWT: \(raw.stdout.prefix(20))…")
        #expect(raw.stdout == appToken + "\n")

        // json: everything about it, parsed.
        let jsonRun = try sandbox.ok(["token", "--format", "json"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(jsonRun.stdout.utf8)) as? [String: Any])
        #expect(json["token"] as? String == appToken)
        #expect(json["profile"] as? String == "default")
        #expect(json["orgId"] as? String == Self.org)
        #expect(json["apiUrl"] as? String == world.emulator.apiURL)
        #expect(json["user"] == nil)
        let jsonLeft = try #require(json["expiresInSeconds"] as? Int)
        #expect(plausibleLeft(jsonLeft), "expiresInSeconds \(jsonLeft)")
        let expiresAt = try #require(json["expiresAt"] as? String)
        let parsed = try #require(ISO8601DateFormatter().date(from: expiresAt), "expiresAt \(expiresAt)")
        #expect(parsed.timeIntervalSince(loginStarted) >= 604_800 - 1 && parsed.timeIntervalSinceNow <= 604_800)

        // helper: exactly {"expiresInSeconds":N,"token":"…"}.
        let helper = try sandbox.ok(["token", "--format", "helper"])
        let helperObject = try #require(try JSONSerialization.jsonObject(with: Data(helper.stdout.utf8)) as? [String: Any])
        #expect(Set(helperObject.keys) == ["token", "expiresInSeconds"])
        let left = try #require(helperObject["expiresInSeconds"] as? Int)
        #expect(plausibleLeft(left), "expiresInSeconds \(left)")
        #expect(helper.stdout == "{\"expiresInSeconds\":\(left),\"token\":\"\(appToken)\"}\n")

        // Three reads of a fresh token: no request at all.
        #expect(try await world.counts()["token"] == 1)

        // A user, then their token.
        let email = "ada@example.com"
        try sandbox.ok(["users", "create", "--email", email, "--first-name", "Ada", "--last-name", "Lovelace",
                        "--role", "admin", "--timezone", "Europe/London"])
        let beforeIssue = Date()
        let issue = try sandbox.ok(["users", "token", email])
        #expect(issue.stdout.isEmpty && !issue.stderr.contains("eyJ"), "users token printed a token")
        #expect(try await world.counts() == ["token": 1, "users.create": 1, "users.token": 1, "users.list": 0, "me": 0])
        // The vault's own API calls carry the client header Tallyfy documents.
        #expect(try await world.emulator.requests() == .init(clientHeaders: ["APIClient": 2], withoutClientHeader: 0))

        let userToken = Self.line(try sandbox.ok(["token", "--user", email]))
        #expect(Self.isJWT(userToken))
        #expect(userToken != appToken)
        let me = try await world.me(userToken)
        try me.expect(200)
        #expect(me.json["kind"] as? String == "user")
        #expect(me.json["email"] as? String == email)
        #expect(me.json["org"] as? String == Self.org)
        let appMe = try await world.me(appToken)
        #expect(appMe.json["kind"] as? String == "application")

        let userJSON = try #require(try JSONSerialization.jsonObject(
            with: Data(try sandbox.ok(["token", "--user", email, "--format", "json"]).stdout.utf8)) as? [String: Any])
        #expect(userJSON["user"] as? String == email)
        let userLeft = try #require(userJSON["expiresInSeconds"] as? Int)
        // 90 days less the time since it was asked for (over 30 s on a loaded machine).
        let elapsed = Int(Date().timeIntervalSince(beforeIssue).rounded(.up)) + 1
        #expect((7_776_000 - elapsed...7_776_000).contains(userLeft), "expiresInSeconds \(userLeft), \(elapsed) s after it was asked for")
        // The user token came from the vault, not from Tallyfy.
        #expect(try await world.counts() == ["token": 1, "users.create": 1, "users.token": 1, "users.list": 0, "me": 2])

        // list: the email and expiry, never a token.
        let list = try sandbox.ok(["users", "list"])
        #expect(list.stdout.contains(email))
        #expect(!list.stdout.contains(userToken) && !list.stdout.contains(appToken) && !list.stdout.contains("eyJ"))
        #expect(!list.stdout.contains(world.secret))

        // forget: gone from the list …
        try sandbox.ok(["users", "forget", email])
        #expect(!(try sandbox.ok(["users", "list"])).stdout.contains(email))
        // … and `token --user` issues a new one with the (still fresh) application token.
        let renewed = Self.line(try sandbox.ok(["token", "--user", email]))
        #expect(Self.isJWT(renewed))
        #expect(renewed != userToken && renewed != appToken)
        #expect(try await world.counts() == ["token": 1, "users.create": 1, "users.token": 2, "users.list": 0, "me": 2])
        let renewedMe = try await world.me(renewed)
        #expect(renewedMe.json["kind"] as? String == "user")
        #expect(renewedMe.json["email"] as? String == email)
        // It was sealed: listed again, and served from the vault next time.
        #expect(try sandbox.ok(["users", "list"]).stdout.contains(email))
        #expect(Self.line(try sandbox.ok(["token", "--user", email, "--no-refresh"])) == renewed)
        #expect(try await world.counts()["users.token"] == 2)

        // Forgetting one that is not sealed is a usage error.
        let again = try world.refused(["users", "forget", "nobody@example.com"], status: 64)
        #expect(again.stderr.contains("nobody@example.com"))
    }

    @Test(arguments: VaultKind.allCases) func fastPathMinTTLAndNoRefresh(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        try sandbox.ok(["login"])
        #expect(try await world.counts()["token"] == 1)

        let first = Self.line(try sandbox.ok(["token"]))
        let second = Self.line(try sandbox.ok(["token"]))
        #expect(first == second)
        #expect(Self.line(try sandbox.ok(["token", "--no-refresh"])) == first)
        #expect(Self.line(try sandbox.ok(["token", "--min-ttl", "6d"])) == first)
        #expect(try await world.counts() == Self.zeroCounts.merging(["token": 1]) { $1 })

        // Asking for more life than the token has (7 days) forces one refresh.
        let forced = Self.line(try sandbox.ok(["token", "--min-ttl", "8d"]))
        #expect(forced != first && Self.isJWT(forced))
        #expect(try await world.counts() == Self.zeroCounts.merging(["token": 2]) { $1 })
        // The new token was sealed: the next ordinary read is served from the vault.
        #expect(Self.line(try sandbox.ok(["token"])) == forced)
        #expect(try await world.counts()["token"] == 2)

        // Eight days later the sealed token has expired: --no-refresh refuses
        // with 78 and asks nobody.
        let expired = try world.refused(["token", "--no-refresh"], status: 78, env: ["TALLYFY_VAULT_TEST_NOW": "+8d"])
        #expect(expired.stderr.contains("--no-refresh"))
        #expect(expired.stdout.isEmpty)
        try world.refused(["token", "--user", "ada@example.com", "--no-refresh"], status: 78)
        #expect(try await world.counts() == Self.zeroCounts.merging(["token": 2]) { $1 })
    }

    @Test(arguments: VaultKind.allCases) func shortLivedTokenExpiresForNoRefresh(_ vault: VaultKind) async throws {
        // 4 s (the JWT's whole-second `exp` may make it 3): long enough for
        // the first read even on a loaded machine.
        let world = try await Self.world(vault: vault, appTokenTTL: 4)
        defer { world.emulator.stop() }
        try world.sandbox.ok(["login"])
        let helper = try world.sandbox.ok(["token", "--no-refresh", "--format", "helper"])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(helper.stdout.utf8)) as? [String: Any])
        #expect((0...4).contains(object["expiresInSeconds"] as? Int ?? -1))
        // The vault's clock 5 s on, instead of waiting for the token to age.
        try world.refused(["token", "--no-refresh"], status: 78, env: ["TALLYFY_VAULT_TEST_NOW": "+5s"])
        #expect(try await world.counts()["token"] == 1)
    }

    // MARK: - Validation before any request

    @Test(arguments: VaultKind.allCases) func invalidUsersAreRefusedBeforeAnyRequest(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        let base = ["users", "create", "--email", "grace@example.com", "--first-name", "Grace", "--last-name", "Hopper"]
        func with(_ option: String, _ value: String) -> [String] {
            var arguments = base
            if let index = arguments.firstIndex(of: option) {
                arguments[index + 1] = value
            } else {
                arguments += [option, value]
            }
            return arguments
        }

        let cases: [(arguments: [String], field: String)] = [
            (with("--first-name", String(repeating: "x", count: 33)), "first name"),
            (with("--last-name", ""), "last name"),
            (with("--email", "grace-at-example.com"), "email"),
            (with("--role", "owner"), "role"),
            (with("--timezone", "Mars/Olympus"), "timezone"),
        ]
        for (arguments, field) in cases {
            let result = try world.refused(arguments, status: 64)
            #expect(result.stderr.lowercased().contains(field), "\(field): \(result.stderr)")
        }
        #expect(try await world.counts() == Self.zeroCounts)

        // users token checks the email too.
        try world.refused(["users", "token", "not an email"], status: 64)
        #expect(try await world.counts() == Self.zeroCounts)
    }

    // MARK: - Refusals from Tallyfy

    @Test(arguments: VaultKind.allCases) func wrongSecretIsInvalidClient(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault, storedSecret: "cs-wrong-\(UUID().uuidString)")
        defer { world.emulator.stop() }
        let result = try world.refused(["login"], status: 77)
        #expect(result.stderr.contains("invalid_client"))
        // 401 is never retried.
        #expect(try await world.counts()["token"] == 1)
        try world.refused(["token"], status: 77)
        #expect(try await world.counts()["token"] == 2)
    }

    @Test(arguments: VaultKind.allCases) func unknownUserAndDuplicateUserAreUsageErrors(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        try world.sandbox.ok(["login"])

        let unknown = try world.refused(["users", "token", "ghost@example.com"], status: 64)
        #expect(unknown.stderr.contains("ghost@example.com"))
        #expect(try await world.counts() == ["token": 1, "users.create": 0, "users.token": 1, "users.list": 0, "me": 0])
        try world.refused(["token", "--user", "ghost@example.com"], status: 64)

        let create = ["users", "create", "--email", "dup@example.com", "--first-name", "D", "--last-name", "Up"]
        try world.sandbox.ok(create)
        let duplicate = try world.refused(create, status: 64)
        #expect(duplicate.stderr.contains("already exists"))
        #expect(try await world.counts()["users.create"] == 2)
    }

    // MARK: - Server trouble

    @Test(arguments: VaultKind.allCases) func twoServerErrorsThenSuccess(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        try await world.emulator.inject(["endpoint": "token", "kind": "status", "status": 503, "times": 2])
        try world.sandbox.ok(["login"])
        #expect(try await world.counts()["token"] == 3)
        let token = Self.line(try world.sandbox.ok(["token", "--no-refresh"]))
        #expect(Self.isJWT(token))
        #expect(try await world.counts()["token"] == 3)
    }

    @Test(arguments: VaultKind.allCases) func serverErrorsThroughEveryAttemptAreUnavailable(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        try await world.emulator.inject(["endpoint": "token", "kind": "status", "status": 503])
        let result = try world.refused(["login"], status: 69)
        #expect(result.stderr.contains("503"))
        #expect(result.stderr.contains("4 attempts"))
        #expect(try await world.counts()["token"] == 4)
    }

    @Test(arguments: VaultKind.allCases) func rateLimitThroughEveryAttemptIsTryLater(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        try await world.emulator.inject(["endpoint": "token", "kind": "rate-limit", "retryAfter": 1])
        let started = Date()
        let result = try world.refused(["login"], status: 75)
        let elapsed = Date().timeIntervalSince(started)
        #expect(result.stderr.contains("429"))
        #expect(try await world.counts()["token"] == 4)
        // Retry-After: 1 was honoured between the attempts.
        #expect(elapsed >= 2.9, "gave up after \(elapsed) s")
        #expect(elapsed < 60, "retries are bounded (took \(elapsed) s)")

        try await world.emulator.reset()
        try await world.emulator.inject(["endpoint": "token", "kind": "rate-limit", "retryAfter": 1, "times": 1])
        try world.sandbox.ok(["login"])
        #expect(try await world.counts()["token"] == 2)
        _ = try world.sandbox.ok(["token", "--no-refresh"])
    }

    @Test(arguments: VaultKind.allCases) func rateLimitLongerThanTheVaultWaitsGivesUpAtOnce(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        try await world.emulator.inject(["endpoint": "token", "kind": "rate-limit", "retryAfter": 3600])
        let result = try world.refused(["login"], status: 75)
        #expect(result.stderr.contains("3600"))
        #expect(try await world.counts()["token"] == 1)
    }

    @Test(arguments: VaultKind.allCases) func htmlErrorPagesAndBrokenJSONAreUnavailable(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }

        // A proxy's 502 page: retried like any 5xx, then a plain message.
        try await world.emulator.inject(["endpoint": "token", "kind": "html"])
        let html = try world.refused(["login"], status: 69)
        #expect(html.stderr.contains("502"))
        for fragment in ["<", "DOCTYPE", "upstream server"] {
            #expect(!html.stderr.contains(fragment), "the HTML shows: \(html.stderr)")
        }

        // An HTML page with 200: not a token, said so without echoing it.
        try await world.emulator.reset()
        try await world.emulator.inject(["endpoint": "token", "kind": "html", "status": 200])
        let html200 = try world.refused(["login"], status: 69)
        #expect(html200.stderr.contains("text/html"))
        for fragment in ["<", "DOCTYPE", "upstream server"] {
            #expect(!html200.stderr.contains(fragment), "the HTML shows: \(html200.stderr)")
        }
        #expect(try await world.counts()["token"] == 1)

        try await world.emulator.reset()
        try await world.emulator.inject(["endpoint": "token", "kind": "broken-json"])
        let broken = try world.refused(["login"], status: 69)
        #expect(broken.stderr.contains("unexpected response"))
        #expect(!broken.stderr.contains("abc"))
        #expect(try await world.counts()["token"] == 1)

        // Same for the user-token endpoint, with a good application token sealed.
        try await world.emulator.reset()
        try world.sandbox.ok(["login"])
        try world.sandbox.ok(["users", "create", "--email", "h@example.com", "--first-name", "H", "--last-name", "T"])
        try await world.emulator.inject(["endpoint": "users.token", "kind": "broken-json"])
        try world.refused(["users", "token", "h@example.com"], status: 69)
        #expect(try await world.counts()["users.token"] == 1)
    }

    @Test(arguments: VaultKind.allCases) func slowServerTimesOut(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        try await world.emulator.inject(["endpoint": "token", "kind": "delay", "delayMs": 5000])
        let started = Date()
        let result = try world.refused(["login"], status: 69, env: ["TALLYFY_VAULT_HTTP_TIMEOUT": "1"])
        let elapsed = Date().timeIntervalSince(started)
        #expect(elapsed < 60, "the timeout applies, 4 × 30 s would be 120 s (took \(elapsed) s)")
        #expect(result.stderr.contains("127.0.0.1"))
    }

    @Test(arguments: VaultKind.allCases) func slowUserCreationIsNotRepeated(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        try world.sandbox.ok(["login"])
        try await world.emulator.inject(["endpoint": "users.create", "kind": "delay", "delayMs": 4000])
        let result = try world.refused(
            ["users", "create", "--email", "slow@example.com", "--first-name", "S", "--last-name", "Low"],
            status: 69, env: ["TALLYFY_VAULT_HTTP_TIMEOUT": "1"])
        #expect(result.stderr.contains("not repeated"))
        #expect(try await world.counts()["users.create"] == 1)

        // Creating a user is not idempotent: a 500 is not retried (it may
        // have been carried out), a 503 is (it says it was not).
        try await world.emulator.reset()
        try await world.emulator.inject(["endpoint": "users.create", "kind": "status", "status": 500, "times": 1])
        let create = ["users", "create", "--email", "fast@example.com", "--first-name", "F", "--last-name", "Ast"]
        try world.refused(create, status: 69)
        #expect(try await world.counts()["users.create"] == 1)
        try await world.emulator.inject(["endpoint": "users.create", "kind": "status", "status": 503, "times": 1])
        try world.sandbox.ok(create)
        #expect(try await world.counts()["users.create"] == 3)
    }

    // MARK: - Where requests may go

    @Test(arguments: VaultKind.allCases) func plainHTTPToANonLoopbackHostIsRefused(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        let result = try world.refused(
            ["credentials", "set", "--org", Self.org, "--client-id", Self.clientID, "--secret-stdin",
             "--token-url", "http://tallyfy.example.com/oauth/token", "--api-url", world.emulator.apiURL],
            status: 64, stdin: world.secret)
        #expect(result.stderr.contains("https://"))
        let api = try world.refused(
            ["credentials", "set", "--org", Self.org, "--client-id", Self.clientID, "--secret-stdin",
             "--token-url", world.emulator.tokenURL, "--api-url", "http://10.0.0.1/api"],
            status: 64, stdin: world.secret)
        #expect(api.stderr.contains("https://"))
        #expect(try await world.counts() == Self.zeroCounts)
        // The stored profile still points at the emulator.
        try world.sandbox.ok(["login"])
    }

    @Test(arguments: VaultKind.allCases) func connectionRefusedIsUnavailable(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        try world.sandbox.ok(["login"])
        world.emulator.stop()
        let login = try world.refused(["login"], status: 69)
        #expect(login.stderr.contains("connection refused"))
        // A fresh sealed token needs no server; a strict refresh does; by
        // default the still-valid sealed token rides the outage out.
        let sealed = try world.sandbox.ok(["token"]).stdout
        try world.refused(["token", "--strict-ttl", "--min-ttl", "8d"], status: 69)
        let degraded = try world.sandbox.ok(["token", "--min-ttl", "8d"])
        #expect(degraded.stdout == sealed && degraded.stderr.contains("connection refused"), "\(degraded.stderr)")
        try world.refused(["users", "token", "ada@example.com"], status: 69)
    }
}

extension TallyfyFlowTests.World {
    /// `sandbox.refused` with standard input.
    @discardableResult
    func refused(_ arguments: [String], status: Int32, stdin: String,
                 sourceLocation: SourceLocation = #_sourceLocation) throws -> RunResult {
        let result = try sandbox.refused(arguments, status: status, stdin: stdin, sourceLocation: sourceLocation)
        TallyfyFlowTests.expectNoLeak(result, secrets: secrets, sourceLocation: sourceLocation)
        return result
    }
}

import Foundation
import Testing

/// `rotate-secret`, `check` and `status` end to end: the real binary against
/// the real emulator, short token lifetimes, and TALLYFY_VAULT_TEST_NOW
/// instead of sleeping. Every test runs on a vault file and on a vault on etcd.
@Suite struct RotationCheckTests {
    static let org = "org-test"
    static let client = "client-test"

    struct World {
        let sandbox: Sandbox
        let emulator: Emulator
        /// Every secret that must never be printed.
        let secrets: [String]

        func counts() async throws -> [String: Int] { try await emulator.counts() }
    }

    /// An emulator accepting `client-test` with `accepted` secrets (a random
    /// one when empty), a sandbox whose default profile stores the first of
    /// them, and (unless `login` is false) a sealed application token.
    static func world(
        vault: VaultKind, accepted: [String] = [], also: [String] = [], appTokenTTL: Int? = nil, userTokenTTL: Int? = nil, login: Bool = true
    ) async throws -> World {
        let secrets = accepted.isEmpty ? ["cs-\(UUID().uuidString)"] : accepted
        let world = try await LoggedIn.start(
            secrets: secrets, client: client, org: org, appTokenTTL: appTokenTTL, userTokenTTL: userTokenTTL, login: login, vault: vault)
        return World(sandbox: world.sandbox, emulator: world.emulator, secrets: secrets + also)
    }

    /// No secret and no token (nothing JWT-like) in either stream.
    static func expectNoLeak(_ result: RunResult, _ secrets: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        for secret in secrets {
            #expect(!result.stdout.contains(secret), "stdout shows a client secret", sourceLocation: sourceLocation)
            #expect(!result.stderr.contains(secret), "stderr shows a client secret", sourceLocation: sourceLocation)
        }
        #expect(!result.stdout.contains("eyJ") && !result.stderr.contains("eyJ"), "a token was printed", sourceLocation: sourceLocation)
    }

    static func lines(_ text: String) -> [String] {
        text.split(separator: "\n").map(String.init)
    }

    static func json(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            "not a JSON object: \(text)", sourceLocation: sourceLocation)
    }

    static func date(_ text: String?, sourceLocation: SourceLocation = #_sourceLocation) throws -> Date {
        try #require(text.flatMap { ISO8601DateFormatter().date(from: $0) }, "not RFC 3339: \(text ?? "nil")",
            sourceLocation: sourceLocation)
    }

    /// The sealed application token and its expiry, read without contacting Tallyfy.
    static func sealedToken(_ sandbox: Sandbox) throws -> (token: String, expiresAt: Date) {
        let object = try json(try sandbox.ok(["token", "--no-refresh", "--format", "json"]).stdout)
        return (try #require(object["token"] as? String), try date(object["expiresAt"] as? String))
    }

    /// The clock pinned to this second, so two runs print the same text.
    static func pinnedClock(offset: TimeInterval = 0) -> [String: String] {
        ["TALLYFY_VAULT_TEST_NOW": String(Int(Date().timeIntervalSince1970 + offset))]
    }

    /// Runs `check …` twice, with the key file and with no unlock source at
    /// all; both must agree on status and output. Returns the keyed run.
    @discardableResult
    static func check(_ sandbox: Sandbox, _ arguments: [String] = [], env: [String: String] = [:],
        sourceLocation: SourceLocation = #_sourceLocation) throws -> RunResult {
        let pinned = env["TALLYFY_VAULT_TEST_NOW"] == nil ? env.merging(pinnedClock()) { $1 } : env
        let keyed = try sandbox.run(["check"] + arguments, env: pinned)
        var keylessEnvironment = sandbox.environment.merging(pinned) { $1 }
        keylessEnvironment.removeValue(forKey: "TALLYFY_VAULT_KEY_FILE")
        let keyless = try runProcess(BuildProducts.vault, ["check"] + arguments, environment: keylessEnvironment)
        #expect(keyless.status == keyed.status, "keyless \(keyless.brief) vs keyed \(keyed.brief)", sourceLocation: sourceLocation)
        #expect(keyless.stdout == keyed.stdout, "keyless: \(keyless.stdout)\nkeyed: \(keyed.stdout)", sourceLocation: sourceLocation)
        #expect(keyless.stderr == keyed.stderr, sourceLocation: sourceLocation)
        #expect(keyed.stderr.isEmpty, "check wrote to stderr: \(keyed.stderr)", sourceLocation: sourceLocation)
        return keyed
    }

    // MARK: - rotate-secret

    @Test(arguments: VaultKind.allCases) func rotatingToASecretTallyfyDoesNotKnowIsRefused(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault, also: ["wrong-\(UUID().uuidString)"])
        defer { world.emulator.stop() }
        let before = try Self.sealedToken(world.sandbox)
        let result = try world.sandbox.refused(["rotate-secret", "--secret-stdin"], status: 77, stdin: world.secrets[1] + "\n")
        Self.expectNoLeak(result, world.secrets)
        #expect(result.stderr.contains("invalid_client"), "\(result.stderr)")
        // The old secret is still the one in use.
        #expect(try Self.sealedToken(world.sandbox).token == before.token)
        Self.expectNoLeak(try world.sandbox.ok(["login"]), world.secrets)
        #expect(try await world.counts()["token"] == 3)  // login, refused rotation, login
    }

    @Test(arguments: VaultKind.allCases) func rotatingToTheNewSecretSealsItAndTheTokenItObtained(_ vault: VaultKind) async throws {
        let old = "old-\(UUID().uuidString)", new = "new-\(UUID().uuidString)"
        let world = try await Self.world(vault: vault, accepted: [old, new])
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let before = try Self.sealedToken(sandbox)
        let statusBefore = try Self.json(try sandbox.ok(["status", "--format", "json"]).stdout)
        let setBefore = try Self.date((statusBefore["profiles"] as? [[String: Any]])?.first?["secretSetAt"] as? String)
        try await world.emulator.reset()

        // An hour later (by the vault's clock), the rotation.
        let rotation = try sandbox.ok(["rotate-secret", "--secret-stdin"], stdin: new + "\n", env: ["TALLYFY_VAULT_TEST_NOW": "+1h"])
        Self.expectNoLeak(rotation, world.secrets)
        #expect(rotation.stdout.isEmpty)
        #expect(rotation.stderr.contains("rotated the client secret of profile \"default\""), "\(rotation.stderr)")
        #expect(try await world.counts()["token"] == 1, "the rotation made other than one token request")

        // The token it obtained is the sealed one: served with no request.
        let after = try Self.sealedToken(sandbox)
        #expect(after.token != before.token)
        #expect(rotation.stderr.contains("valid until \(RFC3339Text.rfc3339(after.expiresAt))"), "\(rotation.stderr)")
        #expect(try await world.counts()["token"] == 1)
        let me = try await world.emulator.send(.GET, "/api/organizations/\(Self.org)/me",
            headers: ["Authorization": "Bearer \(after.token)", "X-Tallyfy-Client": "APIClient"])
        #expect(me.json["kind"] as? String == "application")

        // The secret's date moved, in status and check's JSON alike.
        let statusAfter = try Self.json(try sandbox.ok(["status", "--format", "json"]).stdout)
        let setAfter = try Self.date((statusAfter["profiles"] as? [[String: Any]])?.first?["secretSetAt"] as? String)
        #expect(setAfter.timeIntervalSince(setBefore) > 3500, "secretSetAt \(setBefore) → \(setAfter)")
        let checkJSON = try Self.json(try sandbox.run(["check", "--format", "json"]).stdout)
        let profiles = checkJSON["profiles"] as? [String: [String: Any]]
        #expect(try Self.date(profiles?["default"]?["secretSetAt"] as? String) == setAfter)

        // End the rotation: only the new secret is accepted, and login still works.
        try await world.emulator.setSecrets(client: Self.client, secrets: [new])
        Self.expectNoLeak(try sandbox.ok(["login"]), world.secrets)
        #expect(try await world.counts()["token"] == 2)
    }

    @Test(arguments: VaultKind.allCases) func unreachableTallyfyAndTheSameSecretChangeNothing(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault, also: ["next-\(UUID().uuidString)"])
        let sandbox = world.sandbox
        let same = try sandbox.refused(["rotate-secret", "--secret-stdin"], status: 64, stdin: world.secrets[0] + "\n")
        #expect(same.stderr.contains("already stored"), "\(same.stderr)")
        Self.expectNoLeak(same, world.secrets)
        #expect(try await world.counts()["token"] == 1, "the same secret was sent to Tallyfy")

        world.emulator.stop()
        let down = try sandbox.refused(["rotate-secret", "--secret-stdin"], status: 69, stdin: world.secrets[1] + "\n")
        Self.expectNoLeak(down, world.secrets)
    }

    @Test(arguments: VaultKind.allCases) func noVerifySealsWithoutAnyRequest(_ vault: VaultKind) async throws {
        let new = "new-\(UUID().uuidString)"
        let world = try await Self.world(vault: vault, also: [new])
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let before = try Self.sealedToken(sandbox)
        try await world.emulator.reset()

        let rotation = try sandbox.ok(["rotate-secret", "--secret-stdin", "--no-verify"], stdin: new + "\n")
        Self.expectNoLeak(rotation, world.secrets)
        #expect(rotation.stderr.contains("WITHOUT verifying"), "\(rotation.stderr)")
        #expect(try await world.counts() == ["token": 0, "users.create": 0, "users.token": 0, "users.list": 0, "me": 0])
        // The old token stays until it expires.
        #expect(try Self.sealedToken(sandbox).token == before.token)

        // The new secret is the one stored: refused until Tallyfy knows it …
        Self.expectNoLeak(try sandbox.refused(["login"], status: 77), world.secrets)
        // … and used once it does.
        try await world.emulator.setSecrets(client: Self.client, secrets: [new])
        Self.expectNoLeak(try sandbox.ok(["login"]), world.secrets)
        #expect(try await world.counts()["token"] == 2)
    }

    @Test(arguments: VaultKind.allCases) func anEmptySecretIsAUsageError(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault, login: false)
        defer { world.emulator.stop() }
        for input in ["", "\n", "\r\n"] {
            let result = try world.sandbox.refused(["rotate-secret", "--secret-stdin"], status: 64, stdin: input)
            Self.expectNoLeak(result, world.secrets)
        }
        #expect(try await world.counts()["token"] == 0)
    }

    // MARK: - check

    @Test(arguments: VaultKind.allCases) func aFreshTokenIsSilentAndStatusShowsIt(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let result = try Self.check(sandbox)
        #expect(result.status == 0, "\(result.brief)")
        #expect(result.stdout.isEmpty && result.stderr.isEmpty, "output: \(result.stdout)")

        try sandbox.ok(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"])
        try sandbox.ok(["users", "token", "ann@example.com"])

        // status, text: aligned columns, "in 6d 23h" left.
        let text = try sandbox.ok(["status"])
        Self.expectNoLeak(text, world.secrets)
        let all = Self.lines(text.stdout)
        let header = try #require(all.firstIndex { $0.hasPrefix("PROFILE") }, "no table: \(text.stdout)")
        let columns = ["TOKEN", "EXPIRES", "LEFT"].compactMap { all[header].range(of: $0)?.lowerBound }
            .map { all[header].distance(from: all[header].startIndex, to: $0) }
        #expect(columns.count == 3)
        let rows = Array(all[(header + 1)...])
        #expect(rows.count == 3, "rows: \(rows)")
        for row in rows {
            let characters = Array(row)
            for column in columns {
                #expect(column < characters.count && characters[column] != " " && characters[column - 1] == " ",
                    "column at \(column) not aligned in \"\(row)\"")
            }
        }
        let application = try #require(rows.first { $0.contains("application") })
        #expect(application.hasSuffix("in 6d 23h"), "\(application)")
        #expect(rows.contains { $0.contains("users (1), earliest") && $0.hasSuffix("in 89d 23h") }, "\(rows)")
        #expect(rows.contains { $0.contains("client secret") && $0.hasSuffix(" old") }, "\(rows)")

        // status, JSON.
        let jsonRun = try sandbox.ok(["status", "--format", "json"])
        Self.expectNoLeak(jsonRun, world.secrets)
        let status = try Self.json(jsonRun.stdout)
        let profile = try #require((status["profiles"] as? [[String: Any]])?.first)
        #expect(profile["name"] as? String == "default")
        #expect((profile["applicationTokenLeft"] as? String)?.hasPrefix("in 6d 23h") == true)
        #expect(profile["userTokenCount"] as? Int == 1)
        #expect(status["vault"] as? String == sandbox.vaultLocation)
        #expect(Set(profile.keys).isDisjoint(with: ["clientSecret", "secret", "token", "accessToken"]))
    }

    @Test(arguments: VaultKind.allCases) func aOneDayTokenWarnsAndAnHourIsCritical(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault, appTokenTTL: 86_400)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let warning = try Self.check(sandbox)
        #expect(warning.status == 1, "\(warning.brief)")
        let lines = Self.lines(warning.stdout)
        #expect(lines.count == 1 && lines[0].hasPrefix("WARNING: "), "\(warning.stdout)")
        // "in 23h 59m", or "in 1d" when the clock is pinned in the second the token was issued.
        #expect(lines.first.map { $0.contains("application token expires in 23h") || $0.contains("application token expires in 1d") } == true,
            "\(warning.stdout)")

        // An hour left: critical.
        try await world.emulator.setLifetimes(app: 3600)
        try sandbox.ok(["login"])
        let critical = try Self.check(sandbox)
        #expect(critical.status == 2, "\(critical.brief)")
        #expect(Self.lines(critical.stdout).count == 1 && critical.stdout.hasPrefix("CRITICAL: "), "\(critical.stdout)")
    }

    @Test(arguments: VaultKind.allCases) func anExpiredTokenIsCritical(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        let result = try Self.check(world.sandbox, env: Self.pinnedClock(offset: 8 * 86_400))
        #expect(result.status == 2, "\(result.brief)")
        let lines = Self.lines(result.stdout)
        #expect(lines.count == 1 && lines[0].hasPrefix("CRITICAL: ") && lines[0].contains("expired 1d"), "\(result.stdout)")
    }

    @Test(arguments: VaultKind.allCases) func aVaultThatCantBeReadIsUnknown(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let bytes = try sandbox.sealedVault()
        for length in [bytes.count - 1, bytes.count / 2, 10] {
            try sandbox.replaceSealedVault(with: bytes.prefix(length))
            let result = try Self.check(sandbox)
            #expect(result.status == 3, "truncated to \(length): \(result.brief)")
            let lines = Self.lines(result.stdout)
            #expect(lines.count == 1 && lines[0].hasPrefix("UNKNOWN: "), "truncated to \(length): \(result.stdout)")
        }
        try sandbox.removeVault()
        let missing = try Self.check(sandbox)
        #expect(missing.status == 3, "\(missing.brief)")
        #expect(Self.lines(missing.stdout).count == 1 && missing.stdout.hasPrefix("UNKNOWN: "), "\(missing.stdout)")
    }

    @Test(arguments: VaultKind.allCases) func refreshRenewsApplicationAndUserTokens(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault, appTokenTTL: 86_400, userTokenTTL: 86_400)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        try sandbox.ok(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"])
        try sandbox.ok(["users", "token", "ann@example.com"])
        let before = try Self.check(sandbox)
        #expect(before.status == 1, "\(before.brief)")
        let warnings = Self.lines(before.stdout)
        #expect(warnings.count == 2 && warnings.allSatisfy { $0.hasPrefix("WARNING: ") }, "\(before.stdout)")
        #expect(warnings.contains { $0.contains("a user token") }, "\(before.stdout)")

        try await world.emulator.setLifetimes(app: 604_800, user: 7_776_000)
        try await world.emulator.reset()
        let refreshed = try sandbox.run(["check", "--refresh"])
        #expect(refreshed.status == 0, "\(refreshed.brief) \(refreshed.stdout)")
        #expect(refreshed.stdout.isEmpty && refreshed.stderr.isEmpty, "\(refreshed.stdout)")
        Self.expectNoLeak(refreshed, world.secrets)
        #expect(try await world.counts() == ["token": 1, "users.create": 0, "users.token": 1, "users.list": 0, "me": 0])

        // What is left is fine, and nothing more is renewed.
        #expect(try Self.check(sandbox).status == 0)
        #expect(try sandbox.run(["check", "--refresh"]).status == 0)
        #expect(try await world.counts() == ["token": 1, "users.create": 0, "users.token": 1, "users.list": 0, "me": 0])
    }

    @Test(arguments: VaultKind.allCases) func refreshAlsoRenewsWhatIsOnlyInsideALongerCriticalWindow(_ vault: VaultKind) async throws {
        // 60h left: outside the default 48h warning, inside a 3-day critical window.
        let world = try await Self.world(vault: vault, appTokenTTL: 60 * 3600)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        #expect(try Self.check(sandbox).status == 0)
        #expect(try Self.check(sandbox, ["--critical-before", "3d"]).status == 2)
        try await world.emulator.setLifetimes(app: 604_800)
        let refreshed = try sandbox.run(["check", "--refresh", "--critical-before", "3d"])
        #expect(refreshed.status == 0, "\(refreshed.brief) \(refreshed.stdout)")
        #expect(try await world.counts()["token"] == 2)
    }

    @Test(arguments: VaultKind.allCases) func refreshWithoutAnUnlockSourceIsUnknown(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault, appTokenTTL: 86_400)
        defer { world.emulator.stop() }
        var environment = world.sandbox.environment
        environment.removeValue(forKey: "TALLYFY_VAULT_KEY_FILE")
        let result = try runProcess(BuildProducts.vault, ["check", "--refresh"], environment: environment)
        #expect(result.status == 3, "\(result.brief)")
        #expect(result.stdout.hasPrefix("UNKNOWN: "), "\(result.stdout)")
        #expect(try await world.counts()["token"] == 1)
    }

    @Test(arguments: VaultKind.allCases) func jsonPrometheusAndTheOutputFile(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault, appTokenTTL: 86_400)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let sealed = try Self.sealedToken(sandbox)
        let clock = Self.pinnedClock()

        // JSON
        let jsonRun = try Self.check(sandbox, ["--format", "json"], env: clock)
        #expect(jsonRun.status == 1)
        Self.expectNoLeak(jsonRun, world.secrets)
        let report = try Self.json(jsonRun.stdout)
        #expect(report["status"] as? String == "WARNING")
        #expect(report["exitCode"] as? Int == 1)
        let problems = try #require(report["problems"] as? [[String: Any]])
        #expect(problems.count == 1)
        #expect(problems.first?["status"] as? String == "WARNING")
        #expect(problems.first?["kind"] as? String == "application")
        #expect(problems.first?["profile"] as? String == "default")
        let profiles = try #require(report["profiles"] as? [String: [String: Any]])
        #expect(try Self.date(profiles["default"]?["applicationTokenExpiresAt"] as? String) == sealed.expiresAt)
        #expect(profiles["default"]?["userTokenCount"] as? Int == 0)

        // Prometheus
        let prom = try Self.check(sandbox, ["--format", "prometheus"], env: clock)
        #expect(prom.status == 1)
        Self.expectNoLeak(prom, world.secrets)
        let sample = try Regex(
            #"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?<labels>\{(?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*)?\})? (?<value>\S+)$"#)
        var values: [String: Double] = [:]
        for line in Self.lines(prom.stdout) where !line.hasPrefix("#") {
            let match = try #require(try sample.wholeMatch(in: line), "not a sample: \(line)")
            let value = try #require(match.output["value"]?.substring.flatMap { Double($0) }, "not a number: \(line)")
            let key = String(match.output["name"]?.substring ?? "") + String(match.output["labels"]?.substring ?? "")
            values[key] = value
        }
        let expiry = try #require(values[#"tallyfy_vault_token_expiry_timestamp_seconds{profile="default",kind="application"}"#],
            "\(prom.stdout)")
        #expect(expiry.rounded(.down) == sealed.expiresAt.timeIntervalSince1970.rounded(.down))
        #expect(values["tallyfy_vault_check_status"] == 1)
        #expect(values["tallyfy_vault_check_timestamp_seconds"] == Double(clock["TALLYFY_VAULT_TEST_NOW"]!))
        #expect(values[#"tallyfy_vault_user_tokens{profile="default"}"#] == 0)
        for line in Self.lines(prom.stdout) where line.hasPrefix("#") {
            #expect(line.hasPrefix("# HELP tallyfy_vault_") || line.hasPrefix("# TYPE tallyfy_vault_"), "\(line)")
        }

        // --output: the same text, atomically, 0644, nothing printed.
        let folder = sandbox.root.appendingPathComponent("textfile_collector")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: false)
        let file = folder.appendingPathComponent("tallyfy_vault.prom")
        for round in 0..<2 {  // a new file, then one replaced
            let written = try sandbox.run(["check", "--format", "prometheus", "--output", file.path], env: clock)
            #expect(written.status == 1, "round \(round): \(written.brief)")
            #expect(written.stdout.isEmpty && written.stderr.isEmpty, "round \(round): \(written.stdout)")
            #expect(try String(contentsOf: file, encoding: .utf8) == prom.stdout)
            let mode = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? Int
            #expect(mode == 0o644, "mode \(String(mode ?? 0, radix: 8))")
            #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["tallyfy_vault.prom"])
        }

        // An output file that can't be written is UNKNOWN, not an exit status outside 0–3.
        let unwritable = try sandbox.run(["check", "--format", "prometheus", "--output", sandbox.path("no-such-folder/x.prom")])
        #expect(unwritable.status == 3, "\(unwritable.brief)")
        #expect(unwritable.stdout.hasPrefix("UNKNOWN: "), "\(unwritable.stdout)")
    }

    @Test(arguments: VaultKind.allCases) func anOldSecretWarnsWithTheWayOut(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        // Two days on, a 7-day token is fine for these thresholds; only the secret is old.
        let result = try Self.check(sandbox,
            ["--secret-max-age", "1d", "--warn-before", "1h", "--critical-before", "1m"], env: Self.pinnedClock(offset: 2 * 86_400))
        #expect(result.status == 1, "\(result.brief)")
        let lines = Self.lines(result.stdout)
        #expect(lines.count == 1 && lines[0].hasPrefix("WARNING: ") && lines[0].contains("rotate-secret"), "\(result.stdout)")

        // With the defaults, 91 days on: the 90-day secret warning comes along with the expired token.
        let late = try Self.check(sandbox, env: Self.pinnedClock(offset: 91 * 86_400))
        #expect(late.status == 2, "\(late.brief)")
        let lateLines = Self.lines(late.stdout)
        #expect(lateLines.count == 2, "\(late.stdout)")
        #expect(lateLines.contains { $0.hasPrefix("CRITICAL: ") && $0.contains("application token expired") }, "\(late.stdout)")
        #expect(lateLines.contains { $0.hasPrefix("WARNING: ") && $0.contains("over 90d") && $0.contains("rotate-secret") }, "\(late.stdout)")

        // Rotated two days on: the warning is gone.
        let new = "new-\(UUID().uuidString)"
        try await world.emulator.setSecrets(client: Self.client, secrets: [world.secrets[0], new])
        let twoDaysOn = Self.pinnedClock(offset: 2 * 86_400)
        Self.expectNoLeak(try sandbox.ok(["rotate-secret", "--secret-stdin"], stdin: new, env: twoDaysOn), world.secrets + [new])
        let rotated = try Self.check(sandbox,
            ["--secret-max-age", "1d", "--warn-before", "1h", "--critical-before", "1m"], env: twoDaysOn)
        #expect(rotated.status == 0 && rotated.stdout.isEmpty, "\(rotated.brief) \(rotated.stdout)")
    }

    @Test(arguments: VaultKind.allCases) func aBadDurationIsUnknown(_ vault: VaultKind) async throws {
        let world = try await Self.world(vault: vault, login: false)
        defer { world.emulator.stop() }
        for arguments in [["--warn-before", "10x"], ["--critical-before", "h"], ["--secret-max-age", "1.5d"]] {
            let result = try Self.check(world.sandbox, arguments)
            #expect(result.status == 3, "\(arguments): \(result.brief)")
            let lines = Self.lines(result.stdout)
            #expect(lines.count == 1 && lines[0].hasPrefix("UNKNOWN: ") && lines[0].contains("is not a duration"), "\(result.stdout)")
        }
    }
}

/// RFC 3339 UTC with whole seconds, as the vault prints expiries.
enum RFC3339Text {
    static func rfc3339(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }
}

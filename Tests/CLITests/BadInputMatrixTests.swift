import Foundation
import Testing

/// The bad-input matrix of SECURITY.md: every row is run here against the real
/// binary, with its exit status, a fragment of its message, and (for refusals
/// that reach an existing vault) the vault byte-for-byte unchanged.
///
/// `TALLYFY_WRITE_MATRIX=FILE swift test --filter BadInputMatrixTests`
/// writes the observed table as Markdown instead of checking it; without it,
/// the test compares every row of SECURITY.md's table with what the binary
/// does now.
@Suite struct BadInputMatrixTests {
    /// One bad input: what is done to a fresh sandbox (a key-file vault with
    /// credentials for an emulator), what is run, and what must come out.
    struct Case: Sendable {
        var category: String
        var input: String
        var status: Int32
        var message: String
        var emulatorArguments: [String] = []
        var fault: Emulator.Fault? = nil
        /// What the command reads on standard input.
        var stdin: String? = nil
        var prepare: @Sendable (Sandbox, Emulator) async throws -> [String]
    }

    static let secret = "matrix-\(UUID().uuidString)"

    static func flip(_ sandbox: Sandbox, at position: (Int) -> Int) throws {
        var bytes = try sandbox.vaultBytes()
        bytes[position(bytes.count)] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: sandbox.vaultPath))
    }

    /// Replaces the clear summary's JSON with `edit(json)`, fixing up the
    /// summary and header lengths: a crafted header, as a local attacker or
    /// a damaged disk could leave it.
    static func rewriteSummary(_ sandbox: Sandbox, _ edit: (String) -> String) throws {
        let bytes = [UInt8](try sandbox.vaultBytes())
        func u32(_ at: Int) -> Int { (0..<4).reduce(0) { $0 | Int(bytes[at + $1]) << (8 * $1) } }
        func le(_ value: Int) -> [UInt8] { (0..<4).map { UInt8((value >> (8 * $0)) & 0xFF) } }
        let headerLength = u32(10)
        // The summary's first key, sorted: `generation` since vaults carry one.
        let markers = [Array(#"{"generation""#.utf8), Array(#"{"profiles""#.utf8)]
        let start = markers.lazy.compactMap { marker in (0..<headerLength).first { Array(bytes[$0..<$0 + marker.count]) == marker } }.first!
        let json = Array(edit(String(decoding: bytes[start..<headerLength], as: UTF8.self)).utf8)
        var out = Array(bytes[0..<start - 4]) + le(json.count) + json + Array(bytes[headerLength...])
        out.replaceSubrange(10..<14, with: le(start + json.count))
        try Data(out).write(to: URL(fileURLWithPath: sandbox.vaultPath))
    }

    /// `"key":NUMBER` set to `value` in a summary's JSON.
    static func setNumber(_ key: String, to value: String, in json: String) -> String {
        json.replacing(try! Regex("\"\(key)\":[-+.0-9eE]+"), with: "\"\(key)\":\(value)")
    }

    static func fifo(_ sandbox: Sandbox, _ name: String) -> String {
        let path = sandbox.path(name)
        mkfifo(path, 0o600)
        return path
    }

    static let cases: [Case] = [
        // Files
        Case(category: "file", input: "vault file missing", status: 66, message: "does not exist") { s, _ in
            ["--vault", s.path("none/vault"), "credentials", "show"] },
        Case(category: "file", input: "key file missing", status: 66, message: "does not exist") { s, _ in
            ["--key-file", s.path("nokey"), "credentials", "show"] },
        Case(category: "file", input: "key file of 31 bytes", status: 64, message: "is not a tallyfy-vault key file") { s, _ in
            FileManager.default.createFile(atPath: s.path("short"), contents: Data(count: 31), attributes: [.posixPermissions: 0o600])
            return ["--key-file", s.path("short"), "credentials", "show"] },
        Case(category: "file", input: "key file readable by the group (0640)", status: 77, message: "chmod 600") { s, _ in
            chmod(s.keyPath, 0o640); return ["credentials", "show"] },
        Case(category: "file", input: "vault readable by others (0644)", status: 77, message: "chmod 600") { s, _ in
            chmod(s.vaultPath, 0o644); return ["credentials", "show"] },
        Case(category: "file", input: "vault folder writable by others (0777)", status: 77, message: "chmod 700") { s, _ in
            chmod(s.root.path, 0o777); return ["credentials", "show"] },
        Case(category: "file", input: "vault truncated to 20 bytes", status: 65, message: "truncated") { s, _ in
            try s.vaultBytes().prefix(20).write(to: URL(fileURLWithPath: s.vaultPath)); return ["credentials", "show"] },
        Case(category: "file", input: "vault truncated by its last byte", status: 65, message: "truncated") { s, _ in
            try s.vaultBytes().dropLast().write(to: URL(fileURLWithPath: s.vaultPath)); return ["credentials", "show"] },
        Case(category: "file", input: "vault file empty", status: 65, message: "not a tallyfy-vault file") { s, _ in
            try Data().write(to: URL(fileURLWithPath: s.vaultPath)); return ["credentials", "show"] },
        Case(category: "file", input: "not a vault (wrong magic)", status: 65, message: "not a tallyfy-vault file") { s, _ in
            try flip(s) { _ in 0 }; return ["credentials", "show"] },
        Case(category: "file", input: "format version 3", status: 65, message: "version 3 is not supported") { s, _ in
            var bytes = try s.vaultBytes(); bytes[8] = 3
            try bytes.write(to: URL(fileURLWithPath: s.vaultPath)); return ["credentials", "show"] },
        Case(category: "file", input: "one bit flipped in the sealed body", status: 65, message: "does not authenticate") { s, _ in
            try flip(s) { $0 - 5 }; return ["credentials", "show"] },
        Case(category: "file", input: "one bit flipped in the clear summary", status: 65, message: "damaged") { s, _ in
            let bytes = try s.vaultBytes()
            let position = bytes.range(of: Data("secretSetAt".utf8))!.lowerBound + 1
            try flip(s) { _ in position }; return ["credentials", "show"] },
        Case(category: "file", input: "trailing bytes after the vault", status: 65, message: "unexpected bytes") { s, _ in
            try (s.vaultBytes() + Data([1, 2, 3])).write(to: URL(fileURLWithPath: s.vaultPath)); return ["credentials", "show"] },
        Case(category: "file", input: "vault path is a folder", status: 74, message: "not a regular file") { s, _ in
            ["--vault", s.root.path, "credentials", "show"] },
        Case(category: "file", input: "wrong key file", status: 77, message: "wrong passphrase or key") { s, _ in
            _ = try s.run(["keygen", s.path("other")]); return ["--key-file", s.path("other"), "credentials", "show"] },
        Case(category: "file", input: "passphrase file on a key-file-only vault", status: 77, message: "no passphrase slot") { s, _ in
            let file = try s.write("pw\n", to: "pw")
            return ["--key-file", "", "--passphrase-file", file, "credentials", "show"] },
        Case(category: "file", input: "passphrase file empty", status: 64, message: "is empty") { s, _ in
            let file = try s.write("", to: "pw"); return ["--passphrase-file", file, "credentials", "show"] },
        Case(category: "file", input: "passphrase file missing", status: 66, message: "does not exist") { s, _ in
            ["--passphrase-file", s.path("nope"), "credentials", "show"] },
        Case(category: "file", input: "`init` over an existing vault", status: 64, message: "exists already") { _, _ in ["init"] },
        Case(category: "file", input: "`keygen` over an existing file", status: 64, message: "exists already") { s, _ in ["keygen", s.keyPath] },
        Case(category: "file", input: "`keygen` into a missing folder", status: 66, message: "does not exist") { s, _ in
            ["keygen", s.path("no/such/key")] },
        // Issue 9: files that must be refused at once, not block or crash.
        Case(category: "file", input: "key file is a FIFO", status: 74, message: "not a regular file") { s, _ in
            ["--key-file", fifo(s, "key-fifo"), "credentials", "show"] },
        Case(category: "file", input: "passphrase file is a FIFO", status: 74, message: "not a regular file") { s, _ in
            ["--key-file", "", "--passphrase-file", fifo(s, "pw-fifo"), "credentials", "show"] },
        Case(category: "file", input: "vault is a FIFO", status: 74, message: "not a regular file") { s, _ in
            ["--vault", fifo(s, "vault-fifo"), "credentials", "show"] },
        Case(category: "file", input: "clear summary with `secretSetAt: -1e300` (`status`)", status: 65, message: "damaged (summary)") { s, _ in
            try rewriteSummary(s) { setNumber("secretSetAt", to: "-1e300", in: $0) }; return ["status"] },
        Case(category: "file", input: "clear summary with `applicationTokenExpiresAt: 1e19` (`status --format json`)", status: 65, message: "damaged (summary)") { s, _ in
            try s.ok(["login"])
            try rewriteSummary(s) { setNumber("applicationTokenExpiresAt", to: "1e19", in: $0) }; return ["status", "--format", "json"] },
        Case(category: "file", input: "lock file is a symbolic link (planted by another user)", status: 77, message: "symbolic link") { s, _ in
            unlink(s.vaultPath + ".lock"); symlink(s.path("elsewhere"), s.vaultPath + ".lock"); return ["login"] },
        Case(category: "file", input: "lock file owned by another user", status: 77, message: "lock file") { s, _ in
            FileManager.default.createFile(atPath: s.vaultPath + ".lock", contents: nil, attributes: [.posixPermissions: 0o600])
            chown(s.vaultPath + ".lock", 65534, 65534); return ["login"] },
        Case(category: "file", input: "vault folder of another user, sticky and world-writable (1777)", status: 77, message: "belongs to another user") { s, _ in
            chown(s.root.path, 65534, 65534); chmod(s.root.path, 0o1777); return ["credentials", "show"] },
        Case(category: "file", input: "write to a vault owned by another user (as root)", status: 77, message: "belongs to another user") { s, _ in
            chown(s.vaultPath, 65534, 65534); return ["login"] },
        Case(category: "file", input: "`init --label` with an escape character", status: 64, message: "slot label") { s, _ in
            ["--vault", s.path("new/vault"), "init", "--label", "ops\u{1B}[31m"] },
        Case(category: "file", input: "`init --label` of 300 bytes", status: 64, message: "slot label") { s, _ in
            ["--vault", s.path("new/vault"), "init", "--label", String(repeating: "x", count: 300)] },
        // Flags and arguments
        Case(category: "flag", input: "unknown command", status: 64, message: "unknown command 'frobnicate'") { _, _ in ["frobnicate"] },
        Case(category: "flag", input: "unknown option", status: 64, message: "Unknown option") { _, _ in ["token", "--colour"] },
        Case(category: "flag", input: "`init --kdf extreme`", status: 64, message: "extreme") { s, _ in
            ["--vault", s.path("new/vault"), "init", "--kdf", "extreme"] },
        Case(category: "flag", input: "`--min-ttl 10x`", status: 64, message: "is not a duration") { _, _ in ["token", "--min-ttl", "10x"] },
        Case(category: "flag", input: "`token --format xml`", status: 64, message: "xml") { _, _ in ["token", "--format", "xml"] },
        Case(category: "flag", input: "`exec` without a command", status: 64, message: "no command to run") { _, _ in ["exec"] },
        Case(category: "flag", input: "first name of 33 characters", status: 64, message: "first name") { _, _ in
            ["users", "create", "--email", "a@example.com", "--first-name", String(repeating: "x", count: 33), "--last-name", "L"] },
        Case(category: "flag", input: "email without a domain", status: 64, message: "email") { _, _ in
            ["users", "create", "--email", "ann@", "--first-name", "A", "--last-name", "L"] },
        Case(category: "flag", input: "unknown time zone", status: 64, message: "timezone") { _, _ in
            ["users", "create", "--email", "a@example.com", "--first-name", "A", "--last-name", "L", "--timezone", "Mars/Olympus"] },
        Case(category: "flag", input: "role `owner`", status: 64, message: "owner") { _, _ in
            ["users", "create", "--email", "a@example.com", "--first-name", "A", "--last-name", "L", "--role", "owner"] },
        Case(category: "flag", input: "organization ID with a space", status: 64, message: "--org") { _, _ in
            ["credentials", "set", "--org", "org 1", "--client-id", "c", "--secret-stdin"] },
        Case(category: "flag", input: "plain-http token URL on a remote host", status: 64, message: "https") { _, _ in
            ["credentials", "set", "--org", "o", "--client-id", "c", "--secret-stdin", "--token-url", "http://tallyfy.example.com/oauth/token"] },
        Case(category: "flag", input: "empty client secret on stdin", status: 64, message: "empty") { _, _ in
            ["credentials", "set", "--org", "o", "--client-id", "c", "--secret-stdin"] },
        Case(category: "flag", input: "client secret of 5000 bytes on stdin", status: 64, message: "more than 4096 bytes",
            stdin: String(repeating: "s", count: 5000)) { _, _ in
            ["credentials", "set", "--org", "o", "--client-id", "c", "--secret-stdin"] },
        Case(category: "flag", input: "token URL of 3000 bytes", status: 64, message: "longer than 2048 bytes") { _, _ in
            ["credentials", "set", "--org", "o", "--client-id", "c", "--secret-stdin",
             "--token-url", "https://go.tallyfy.com/" + String(repeating: "a", count: 3000)] },
        Case(category: "flag", input: "plain-http token URL to `localhost.` (a DNS name)", status: 64, message: "https") { _, _ in
            ["credentials", "set", "--org", "o", "--client-id", "c", "--secret-stdin", "--token-url", "http://localhost.:8080/oauth/token"] },
        Case(category: "flag", input: "`export --format dotenv` of an org ID with a quote and a backtick", status: 64, message: "cannot carry safely") { s, _ in
            try s.ok(["credentials", "set", "--org", "o'`id`$(id)", "--client-id", "client-test", "--secret-stdin",
                "--token-url", s.environment["MATRIX_TOKEN_URL"]!, "--api-url", s.environment["MATRIX_API_URL"]!], stdin: secret)
            try s.ok(["login"])
            return ["export", "--format", "dotenv"] },
        Case(category: "flag", input: "`keys remove` of an unknown label", status: 64, message: "no key slot is labelled") { _, _ in
            ["keys", "remove", "nobody"] },
        Case(category: "flag", input: "`keys remove` of the last slot", status: 64, message: "only key slot") { _, _ in
            ["keys", "remove", "key-file"] },
        Case(category: "flag", input: "`keys add` with both a key file and a passphrase file", status: 64, message: "give one of --new-key-file") { s, _ in
            ["keys", "add", "--new-key-file", s.keyPath, "--new-passphrase-file", s.keyPath] },
        Case(category: "flag", input: "profile name with a space", status: 64, message: "is not allowed") { _, _ in
            ["--profile", "my profile", "credentials", "set", "--org", "o", "--client-id", "c", "--secret-stdin"] },
        Case(category: "flag", input: "`users forget` of a user with no token", status: 64, message: "no sealed token") { _, _ in
            ["users", "forget", "nobody@example.com"] },
        // Environment
        Case(category: "environment", input: "no unlock source and no terminal", status: 78, message: "no terminal") { _, _ in
            ["--key-file", "", "credentials", "show"] },
        Case(category: "environment", input: "wrong TALLYFY_VAULT_PASSPHRASE", status: 77, message: "TALLYFY_VAULT_PASSPHRASE") { s, _ in
            let file = try s.write("right\n", to: "pw")
            _ = try s.run(["keys", "add", "--new-passphrase-file", file])
            return ["--key-file", "", "credentials", "show"] },
        Case(category: "environment", input: "`exec` inside `exec` (TALLYFY_VAULT_EXEC set)", status: 64, message: "nesting is refused") { _, _ in
            ["exec", "--", "true"] },
        Case(category: "environment", input: "TALLYFY_VAULT_MIN_TTL=soon", status: 64, message: "is not a duration") { _, _ in ["token"] },
        Case(category: "environment", input: "profile without credentials", status: 78, message: "has no credentials") { _, _ in
            ["--profile", "other", "token"] },
        Case(category: "environment", input: "`--no-refresh` and no token sealed", status: 78, message: "--no-refresh") { _, _ in
            ["token", "--no-refresh"] },
        // Server answers
        Case(category: "server", input: "wrong client secret (`invalid_client`)", status: 77, message: "invalid_client") { s, _ in
            _ = try s.run(["credentials", "set", "--org", "org-test", "--client-id", "client-test", "--secret-stdin",
                "--token-url", s.environment["MATRIX_TOKEN_URL"]!, "--api-url", s.environment["MATRIX_API_URL"]!], stdin: "not-the-secret")
            return ["login"] },
        Case(category: "server", input: "503 on every attempt", status: 69, message: "after 4 attempts",
            fault: .init(endpoint: "token", kind: "status", status: 503)) { _, _ in ["login"] },
        Case(category: "server", input: "429 with Retry-After: 3600", status: 75, message: "Retry-After",
            fault: .init(endpoint: "token", kind: "rate-limit", retryAfter: 3600)) { _, _ in ["login"] },
        Case(category: "server", input: "an HTML error page (502)", status: 69, message: "502",
            fault: .init(endpoint: "token", kind: "html")) { _, _ in ["login"] },
        Case(category: "server", input: "broken JSON with status 200", status: 69, message: "unexpected response",
            fault: .init(endpoint: "token", kind: "broken-json")) { _, _ in ["login"] },
        Case(category: "server", input: "connection refused", status: 69, message: "connection refused") { _, emulator in
            _ = emulator.stop(); return ["login"] },
        Case(category: "server", input: "a token said to live 11 years (`expires_in` and JWT `exp`)", status: 69, message: "unexpected response") { _, emulator in
            try await emulator.setLifetimes(app: 11 * 365 * 86_400); return ["login"] },
        Case(category: "server", input: "user token for an unknown email (404)", status: 64, message: "users create") { _, _ in
            ["users", "token", "nobody@example.com"] },
        Case(category: "server", input: "slow answer past the timeout", status: 69, message: "Tallyfy",
            fault: .init(endpoint: "token", kind: "delay", delayMs: 4000)) { _, _ in ["login"] },
        // Child processes and signals
        Case(category: "exec", input: "command not found", status: 127, message: "command not found") { _, _ in
            ["exec", "--", "no-such-command-xyz"] },
        Case(category: "exec", input: "command not executable", status: 126, message: "is not executable") { s, _ in
            ["exec", "--", try s.write("#!/bin/sh\n", to: "script")] },
        Case(category: "signal", input: "the child is killed by SIGKILL (its own death, pid kept)", status: 9, message: "") { _, _ in
            ["exec", "--", "sh", "-c", "kill -KILL $$"] },
        Case(category: "check", input: "`check` on a truncated vault", status: 3, message: "UNKNOWN") { s, _ in
            try s.vaultBytes().prefix(30).write(to: URL(fileURLWithPath: s.vaultPath)); return ["check"] },
        Case(category: "check", input: "`check --warn-before 10x`", status: 3, message: "UNKNOWN") { _, _ in ["check", "--warn-before", "10x"] },
        Case(category: "check", input: "`check` on a clear summary with `applicationTokenExpiresAt: -1e19`", status: 3, message: "UNKNOWN") { s, _ in
            try s.ok(["login"])
            try rewriteSummary(s) { setNumber("applicationTokenExpiresAt", to: "-1e19", in: $0) }; return ["--key-file", "", "check"] },
        Case(category: "check", input: "`check` on a clear summary with `secretSetAt: -1e300`", status: 3, message: "UNKNOWN") { s, _ in
            try rewriteSummary(s) { setNumber("secretSetAt", to: "-1e300", in: $0) }; return ["--key-file", "", "check"] },
    ]

    /// Extra environment for the cases that are about the environment.
    static func environment(for input: String) -> [String: String] {
        switch input {
        case "wrong TALLYFY_VAULT_PASSPHRASE": ["TALLYFY_VAULT_PASSPHRASE": "wrong"]
        case "`exec` inside `exec` (TALLYFY_VAULT_EXEC set)": ["TALLYFY_VAULT_EXEC": "default"]
        case "TALLYFY_VAULT_MIN_TTL=soon": ["TALLYFY_VAULT_MIN_TTL": "soon"]
        case "slow answer past the timeout": ["TALLYFY_VAULT_HTTP_TIMEOUT": "1"]
        default: [:]
        }
    }

    struct Observed: Sendable {
        var category: String
        var input: String
        var status: Int32
        var message: String
    }

    @Test func everyBadInputHasItsStatusAndMessageAndChangesNothing() async throws {
        #expect(Self.cases.count >= 40)
        let observed = try await withThrowingTaskGroup(of: Observed.self) { group in
            for item in Self.cases {
                group.addTask { try await Self.run(item) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        let order = Dictionary(uniqueKeysWithValues: Self.cases.enumerated().map { ($1.input, $0) })
        let rows = observed.sorted { order[$0.input]! < order[$1.input]! }.map {
            "| \($0.category) | \($0.input) | \($0.status) | \($0.message.replacingOccurrences(of: "|", with: "\\\\|")) |"
        }
        if let path = ProcessInfo.processInfo.environment["TALLYFY_WRITE_MATRIX"] {
            let table = (["| kind | bad input | status | message (first line) |", "|---|---|---|---|"] + rows).joined(separator: "\n")
            try (table + "\n").write(toFile: path, atomically: true, encoding: .utf8)
            return
        }
        // The table in SECURITY.md is what the binary does: every row a case,
        // every case a row, with the status and first line observed now.
        let documented = try Self.documentedRows()
        #expect(documented.count == rows.count, "SECURITY.md lists \(documented.count) rows, the matrix has \(rows.count) cases")
        for row in rows where !documented.contains(row) {
            Issue.record("SECURITY.md's bad-input matrix does not show what the binary does: \(row)")
        }
        for row in documented where !rows.contains(row) {
            Issue.record("SECURITY.md's bad-input matrix has a row no case produced: \(row)")
        }
    }

    /// The rows of SECURITY.md's bad-input matrix table, as written.
    static func documentedRows() throws -> [String] {
        let security = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("SECURITY.md")
        let text = try String(contentsOf: security, encoding: .utf8)
        guard let section = text.range(of: "## Bad-input matrix") else { return [] }
        let lines = text[section.upperBound...].split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let header = lines.firstIndex(of: "| kind | bad input | status | message (first line) |") else { return [] }
        return Array(lines[(header + 2)...].prefix { $0.hasPrefix("| ") })
    }

    static func run(_ item: Case) async throws -> Observed {
        let emulator = try await Emulator.start(clients: [("client-test", secret)])
        defer { _ = emulator.stop() }
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        try sandbox.storeCredentials(for: emulator, secret: secret)
        if item.category == "exec" || item.category == "signal" { try sandbox.ok(["login"]) }
        sandbox.environment["MATRIX_TOKEN_URL"] = emulator.tokenURL
        sandbox.environment["MATRIX_API_URL"] = emulator.apiURL
        if let fault = item.fault { try await emulator.inject(fault) }
        let arguments = try await item.prepare(sandbox, emulator)
        var environment = environment(for: item.input)
        if arguments.starts(with: ["--key-file", ""]) { environment["TALLYFY_VAULT_KEY_FILE"] = "" }
        let cleaned = arguments.starts(with: ["--key-file", ""]) ? Array(arguments.dropFirst(2)) : arguments
        let before = try? sandbox.vaultBytes()
        let result = try sandbox.run(cleaned, stdin: item.stdin, env: environment)
        let label = "\(item.category): \(item.input)"
        #expect(result.status == item.status, "\(label): \(result.brief)")
        #expect(item.message.isEmpty || (result.stderr + result.stdout).contains(item.message), "\(label): \(result.brief)")
        #expect(!(result.stderr + result.stdout).contains(secret), "\(label): the secret was printed")
        if item.status != 0 && !["exec", "signal", "check"].contains(item.category) {
            #expect(result.stderr.hasPrefix("tallyfy-vault: "), "\(label): \(result.brief)")
        }
        #expect((try? sandbox.vaultBytes()) == before, "\(label): the vault changed")
        let firstLine = (result.stderr.isEmpty ? result.stdout : result.stderr).split(separator: "\n").first.map(String.init) ?? ""
        var message = firstLine.replacingOccurrences(of: sandbox.root.path, with: "DIR")
            .replacingOccurrences(of: emulator.baseURL.replacingOccurrences(of: "http://", with: ""), with: "HOST:PORT")
            // Each answer has its own request ID.
            .replacingOccurrences(of: #"\(request ID [0-9a-f]+\)"#, with: "(request ID …)", options: .regularExpression)
        if item.input == "slow answer past the timeout" {
            // How many attempts fit in the deadline depends on the machine's load.
            message = message.replacingOccurrences(of: #"after \d+ attempts"#, with: "after N attempts", options: .regularExpression)
        }
        return Observed(category: item.category, input: item.input, status: result.status, message: message)
    }
}

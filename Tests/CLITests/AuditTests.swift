import Foundation
import Testing

/// The audit log end to end: the real binaries against the emulator, the
/// log read back from disk. Each hand-out and each change leaves its record
/// with who asked; no secret is in it in any encoding; `audit verify` passes
/// on a log many processes wrote at once and fails, naming the record, on
/// each kind of tampering; `required` fails closed.
@Suite struct AuditTests {
    let old = "cs-old-\(UUID().uuidString)"
    let new = "cs-new-\(UUID().uuidString)"

    /// This machine's log of the sandbox's vault, at its default place.
    static func defaultLog(_ sandbox: Sandbox) throws -> String {
        let folder = sandbox.path(".local/state/tallyfy-vault/audit")
        let logs = try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasSuffix(".log") }
        try #require(logs.count == 1, "logs in \(folder): \(logs)")
        return folder + "/" + logs[0]
    }

    static func records(_ path: String) throws -> [[String: Any]] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any], "not a record: \($0)")
        }
    }

    static func string(_ record: [String: Any], _ key: String) -> String? { record[key] as? String }
    static func int(_ record: [String: Any], _ key: String) -> Int? { (record[key] as? NSNumber)?.intValue }

    @Test func everyHandOutAndChangeLeavesItsRecordWithWhoAsked() async throws {
        let world = try await LoggedIn.start(secrets: [old, new])
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let log = try Self.defaultLog(sandbox)
        // $XDG_STATE_HOME (here ~/.local/state)/tallyfy-vault/audit/<vault id>.log, 0600 in a 0700 folder.
        let name = URL(fileURLWithPath: log).deletingPathExtension().lastPathComponent
        #expect(name.count == 32 && name.allSatisfy(\.isHexDigit), "log name \(name)")
        let fileMode = try FileManager.default.attributesOfItem(atPath: log)[.posixPermissions] as? Int
        let folderMode = try FileManager.default.attributesOfItem(atPath: sandbox.path(".local/state/tallyfy-vault/audit"))[.posixPermissions] as? Int
        #expect(fileMode == 0o600 && folderMode == 0o700, "modes \(String(fileMode ?? 0, radix: 8)) \(String(folderMode ?? 0, radix: 8))")

        var expected: [(op: String, event: String, pid: Int32?)] = [("init", "change", nil), ("credentials set", "change", nil), ("login", "change", nil)]
        func run(_ arguments: [String], _ records: [(String, String)], stdin: String? = nil, env: [String: String] = [:], status: Int32 = 0) throws {
            let result = try sandbox.run(arguments, stdin: stdin, env: env)
            #expect(result.status == status, "\(arguments.joined(separator: " ")): \(result.brief)")
            expected += records.map { ($0.0, $0.1, result.pid) }
        }
        try run(["exec", "--", "true"], [("exec", "hand-out")])  // the launcher's fast path
        try run(["exec", "--no-mask", "--min-ttl", "30d", "--", "true"], [("exec", "hand-out")])  // renewed by the CLI: a change, then the hand-out
        expected.insert(("exec", "change", expected.last!.pid), at: expected.count - 1)
        try run(["token"], [("token", "hand-out")])
        try run(["token", "--format", "json"], [("token", "hand-out")])
        try run(["token", "--format", "helper"], [("token", "hand-out")])
        try run(["export"], [("export", "hand-out")])
        try run(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"],
            [("users create", "hand-out"), ("users create", "change")])
        try run(["users", "token", "ann@example.com"], [("users token", "change")])
        try run(["exec", "--user", "ann@example.com", "--", "true"], [("exec", "hand-out")])
        try run(["users", "forget", "ann@example.com"], [("users forget", "change")])
        try run(["rotate-secret", "--secret-stdin"], [("rotate-secret", "change")], stdin: new + "\n")
        let second = sandbox.path("second.key")
        try sandbox.ok(["keygen", second])
        try run(["keys", "add", "--new-key-file", second, "--label", "second"], [("keys add", "change")])
        try run(["keys", "remove", "second"], [("keys remove", "change")])
        try run(["rekey"], [("rekey", "change")])
        let wrong = sandbox.path("wrong.key")
        try sandbox.ok(["keygen", wrong])
        try run(["exec", "--", "true"], [("exec", "unlock-refused")], env: ["TALLYFY_VAULT_KEY_FILE": wrong], status: 77)
        try run(["token"], [("token", "unlock-refused")], env: ["TALLYFY_VAULT_KEY_FILE": wrong], status: 77)
        try run(["migrate", "--to", sandbox.path("moved")], [("migrate", "change")])
        try sandbox.ok(["exec", "--", "true"])
        let token = try sandbox.ok(["token"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        expected += [("exec", "hand-out", nil), ("token", "hand-out", nil)]
        try run(["credentials", "remove"], [("credentials remove", "change")])

        let records = try Self.records(log)
        var position = 0
        for want in expected {
            guard let found = records[position...].firstIndex(where: {
                Self.string($0, "op") == want.op && Self.string($0, "event") == want.event
                    && (want.pid == nil || Self.int($0, "pid") == Int(want.pid!))
            }) else {
                Issue.record("no \(want.op) \(want.event) record (pid \(want.pid.map(String.init) ?? "-")) after record \(position): \(records.map { "\(Self.string($0, "op")!)/\(Self.string($0, "event")!)" })")
                break
            }
            position = found + 1
        }
        // Exactly one record of the refused exec, though the launcher and the CLI both tried the key.
        #expect(records.filter { Self.string($0, "event") == "unlock-refused" && Self.string($0, "op") == "exec" }.count == 1)

        let timePattern = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
        for (index, record) in records.enumerated() {
            #expect(Self.int(record, "seq") == index + 1)
            #expect(Self.string(record, "time").map { $0.wholeMatch(of: timePattern) != nil } == true, "\(record)")
            #expect(Self.int(record, "uid") == Int(getuid()) && (Self.int(record, "pid") ?? 0) > 0 && (Self.int(record, "ppid") ?? 0) > 0, "\(record)")
            #expect(Self.string(record, "parent")?.isEmpty == false && Self.string(record, "host")?.isEmpty == false, "\(record)")
            let event = Self.string(record, "event")!
            #expect(Self.string(record, "result") == (event == "unlock-refused" ? Self.string(record, "result") : "ok"), "\(record)")
            if event == "unlock-refused" {
                #expect(Self.string(record, "result")?.hasPrefix("77: wrong passphrase or key") == true, "\(record)")
                #expect(Self.string(record, "mac") == "none")
            } else if Self.string(record, "op") != "migrate" {
                #expect(Self.string(record, "mac")?.count == 64, "\(record)")
            }
            if event == "hand-out" {
                #expect(Self.string(record, "profile") == "default" && Self.string(record, "token")?.count == 32, "\(record)")
            }
        }
        #expect(records.contains { Self.string($0, "event") == "hand-out" && Self.string($0, "user") == "ann@example.com" })
        #expect(records.contains { Self.string($0, "op") == "users token" && Self.string($0, "change") == "renewal" && Self.string($0, "token") != nil })

        // The chain holds across rekey (the audit key was pinned) and the unkeyed records.
        let verified = try sandbox.ok(["audit", "verify"])
        #expect(verified.stdout.contains("\(records.count) records, intact"), "\(verified.stdout)")
        // The token printed by `token` is found by its fingerprint; the log itself never holds it.
        let found = try sandbox.ok(["audit", "find", "--token", "--format", "json"], stdin: token + "\n")
        let hits = try #require(try JSONSerialization.jsonObject(with: Data(found.stdout.utf8)) as? [[String: Any]])
        #expect(hits.count == 2 && hits.map { Self.string($0, "op") } == ["exec", "token"] && hits.allSatisfy { Self.string($0, "token") == Self.string(hits[0], "token") }, "\(found.stdout)")
        let shown = try sandbox.ok(["audit", "show", "--op", "rekey", "--since", "1h"])
        #expect(shown.stdout.split(separator: "\n").count == 2 && shown.stdout.contains("rekey"), "\(shown.stdout)")
    }

    /// No token, client secret, key or passphrase, raw or encoded, anywhere in the log.
    @Test func theLogHoldsNoSecretInAnyEncoding() async throws {
        let world = try await LoggedIn.start(secrets: [old, new])
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        var secrets = [Data(old.utf8), Data(new.utf8), try Data(contentsOf: URL(fileURLWithPath: sandbox.keyPath))]
        let passphrase = "pp-\(UUID().uuidString)"
        try sandbox.ok(["keys", "add", "--new-passphrase-file", try sandbox.write(passphrase + "\n", to: "pp"), "--label", "pp"])
        secrets.append(Data(passphrase.utf8))
        try sandbox.ok(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"])
        try sandbox.ok(["users", "token", "ann@example.com"])
        for arguments in [["token"], ["token", "--user", "ann@example.com"], ["token", "--min-ttl", "30d"]] {
            secrets.append(Data(try sandbox.ok(arguments).stdout.trimmingCharacters(in: .whitespacesAndNewlines).utf8))
        }
        try sandbox.ok(["rotate-secret", "--secret-stdin"], stdin: new + "\n")
        try sandbox.ok(["exec", "--", "true"])
        try sandbox.run(["token"], env: ["TALLYFY_VAULT_KEY_FILE": try sandbox.write("not-the-key\n", to: "bad.key")])

        let log = try Data(contentsOf: URL(fileURLWithPath: try Self.defaultLog(sandbox)))
        #expect(log.split(separator: 0x0A).count >= 10)
        for secret in secrets where !secret.isEmpty {
            let base64 = secret.base64EncodedString()
            let base64url = base64.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
            let hex = secret.map { String(format: "%02x", $0) }.joined()
            for (form, encoded) in [("raw", secret), ("base64", Data(base64.utf8)), ("base64url", Data(base64url.utf8)),
                ("hex", Data(hex.utf8)), ("HEX", Data(hex.uppercased().utf8))] {
                #expect(log.firstRange(of: encoded) == nil, "a secret is in the audit log (\(form))")
            }
        }
    }

    @Test func verifyPassesAfterFiftyConcurrentExecs() async throws {
        let world = try await LoggedIn.start()
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let log = try Self.defaultLog(sandbox)
        let before = try Self.records(log).count
        let statuses = await withTaskGroup(of: Int32.self) { group in
            for _ in 0..<50 { group.addTask { (try? sandbox.run(["exec", "--", "true"]))?.status ?? -1 } }
            return await group.reduce(into: [Int32]()) { $0.append($1) }
        }
        #expect(statuses.allSatisfy { $0 == 0 }, "\(statuses)")
        let records = try Self.records(log)
        #expect(records.count == before + 50)
        #expect(records.map { Self.int($0, "seq") ?? 0 } == Array(1...records.count))
        let verified = try sandbox.ok(["audit", "verify"])
        #expect(verified.stdout.contains("\(before + 50) records, intact"), "\(verified.stdout)")
    }

    /// Each kind of tampering fails `verify` (65), naming the record.
    /// On etcd too: each machine keeps its own log, and the vault seals its head.
    @Test(arguments: VaultKind.allCases) func everyKindOfTamperingFailsVerifyNamingTheRecord(_ vault: VaultKind) async throws {
        let world = try await LoggedIn.start(vault: vault)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let log = try Self.defaultLog(sandbox)
        for _ in 0..<4 { try sandbox.ok(["exec", "--", "true"]) }
        try sandbox.ok(["keys", "add", "--new-key-file", { let k = sandbox.path("k2"); try? sandbox.run(["keygen", k]); return k }(), "--label", "k2"])
        for _ in 0..<3 { try sandbox.ok(["exec", "--", "true"]) }
        let original = try String(contentsOfFile: log, encoding: .utf8)
        let lines = original.split(separator: "\n").map(String.init)
        #expect(lines.count == 11, "\(lines.count) records")  // init, credentials set, login, 4 execs, keys add, 3 execs
        try sandbox.ok(["audit", "verify"])

        func tampered(_ change: (inout [String]) throws -> Void, _ phrase: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
            var copy = lines
            try change(&copy)
            try (copy.joined(separator: "\n") + "\n").write(toFile: log, atomically: false, encoding: .utf8)
            let result = try sandbox.refused(["audit", "verify"], status: 65, sourceLocation: sourceLocation)
            #expect(result.stderr.contains("the audit log \(log) does not verify: "), "\(result.stderr)", sourceLocation: sourceLocation)
            #expect(result.stderr.contains(phrase), "wanted \(phrase): \(result.stderr)", sourceLocation: sourceLocation)
        }
        // A flipped byte (a digit of the pid).
        try tampered({ $0[4] = $0[4].replacingOccurrences(of: "\"pid\":", with: "\"pid\":9") }, "record 5 (line 5 of \(log)) was changed or forged: its MAC does not verify")
        // A deleted record.
        try tampered({ $0.remove(at: 4) }, "record 6 (line 5 of \(log)): record 5 is missing before it")
        // Two records swapped.
        try tampered({ $0.swapAt(4, 5) }, "record 6 (line 5 of \(log)) is out of order")
        // A duplicated record.
        try tampered({ $0.insert($0[4], at: 5) }, "record 5 (line 6 of \(log)) is duplicated: the same record is at line 5")
        // A record forged with a recomputed plain hash (SHA-256 of its bytes before the MAC).
        try tampered({ copy in
            let prefix = copy[5][..<copy[5].range(of: ",\"mac\":\"")!.lowerBound].replacingOccurrences(of: "\"result\":\"ok\"", with: "\"result\":\"ok \"")
            let hash = try runProcess(URL(fileURLWithPath: "/usr/bin/sha256sum"), [], environment: [:], stdin: prefix).stdout.prefix(64)
            copy[5] = prefix + ",\"mac\":\"\(hash)\"}"
        }, "record 6 (line 6 of \(log)) was changed or forged")
        // Cut back to before the last vault write (keys add sealed record 7 as the head).
        try tampered({ $0.removeLast(5) }, "the log was cut back: the vault's last write sealed record 7 as this log's head, but the log ends at record 6")
        // Put back as it was: intact again.
        try original.write(toFile: log, atomically: false, encoding: .utf8)
        try sandbox.ok(["audit", "verify"])
    }

    /// `exec --keep-fresh`: the first token and each renewal handed to the
    /// child are hand-outs of the supervising process, each with its own
    /// fingerprint, each found by `audit find --token`.
    @Test func keepFreshRecordsEveryTokenHandedToTheChild() async throws {
        let world = try await LoggedIn.start(appTokenTTL: 4)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let seen = sandbox.path("seen")
        let script = """
            n=0
            trap 'n=$((n+1)); cat "$TALLYFY_TOKEN_FILE" >> "$LOG"; echo >> "$LOG"; [ "$n" -ge 2 ] && exit 0' HUP
            while :; do sleep 0.1; done
            """
        let result = try sandbox.run(["exec", "--keep-fresh", "--on-renew", "signal:HUP", "--min-ttl", "2s", "--", "/bin/sh", "-c", script],
            env: ["LOG": seen])
        #expect(result.status == 0, "\(result.brief)")
        let tokens = try String(contentsOfFile: seen, encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(tokens.count == 2 && Set(tokens).count == 2, "\(tokens.count) tokens")
        let handOuts = try Self.records(try Self.defaultLog(sandbox)).filter {
            Self.string($0, "event") == "hand-out" && Self.int($0, "pid") == Int(result.pid) && Self.string($0, "op") == "exec"
        }
        #expect(handOuts.count >= 3 && Set(handOuts.compactMap { Self.string($0, "token") }).count == handOuts.count, "\(handOuts)")
        for token in tokens {
            let found = try sandbox.ok(["audit", "find", "--token", "--format", "json"], stdin: token + "\n")
            let hits = try #require(try JSONSerialization.jsonObject(with: Data(found.stdout.utf8)) as? [[String: Any]])
            #expect(hits.contains { Self.string($0, "event") == "hand-out" && Self.int($0, "pid") == Int(result.pid) }, "\(found.stdout)")
        }
        try sandbox.ok(["audit", "verify"])
    }

    /// A rolled-back vault refused, then accepted on purpose: both recorded.
    @Test func aRollbackRefusedAndAcceptedIsRecorded() async throws {
        let world = try await LoggedIn.start()
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let older = try sandbox.vaultBytes()
        let extra = sandbox.path("extra.key")
        try sandbox.ok(["keygen", extra])
        try sandbox.ok(["keys", "add", "--new-key-file", extra, "--label", "extra"])
        try older.write(to: URL(fileURLWithPath: sandbox.vaultPath))
        let refused = try sandbox.refused(["exec", "--", "true"], status: 65)
        let accepted = try sandbox.ok(["--accept-rollback", "token"])
        let records = try Self.records(try Self.defaultLog(sandbox))
        let refusal = records.filter { Self.string($0, "event") == "rollback-refused" }
        #expect(refusal.count == 1 && Self.int(refusal[0], "pid") == Int(refused.pid), "\(refusal)")
        #expect(refusal.first.flatMap { Self.string($0, "result") }?.hasPrefix("65: the vault at ") == true, "\(refusal)")
        #expect(records.contains { Self.string($0, "event") == "rollback-accepted" && Self.int($0, "pid") == Int(accepted.pid) })
        try sandbox.ok(["audit", "verify"])
    }

    /// The agent records each answer as its client's: the requesting pid,
    /// that process's parent, not the agent's own.
    @Test func anAgentAnswerNamesTheRequestingProcess() async throws {
        let agentTests = AgentTests()
        let (sandbox, emulator, unlock, _) = try await agentTests.world()
        defer { _ = emulator.stop() }
        let agent = try agentTests.startAgent(sandbox, unlock: unlock)
        defer { agent.kill(SIGTERM) }
        let client = try sandbox.ok(["token", "--min-ttl", "1s"])
        let exec = try sandbox.ok(["exec", "--", "true"])
        let all = try Self.records(try Self.defaultLog(sandbox))
        let records = all.filter { Self.string($0, "op") == "agent" && Self.string($0, "event") == "hand-out" }
        for pid in [client.pid, exec.pid] {
            let record = try #require(records.first { Self.int($0, "pid") == Int(pid) }, "no agent record for pid \(pid): \(all)\n\(agent.stderrSoFar)")
            #expect(Self.int(record, "ppid") == Int(getpid()), "\(record)")
            #expect(Self.int(record, "pid") != Int(agent.pid))
            #expect(Self.string(record, "token")?.count == 32 && Self.string(record, "profile") == "default", "\(record)")
        }
        try sandbox.ok(["audit", "verify"], env: unlock)
    }

    /// `required` refuses (74) to hand out or change what it can't record;
    /// the default warns once and goes on; `off` writes nothing and says so.
    @Test func requiredFailsClosedOnAnUnwritableLog() async throws {
        let world = try await LoggedIn.start()
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        // A folder where the log should be: no one, root included, can append to it.
        let unwritable = sandbox.path("log-is-a-folder")
        try FileManager.default.createDirectory(atPath: unwritable, withIntermediateDirectories: false)
        let required = ["TALLYFY_VAULT_AUDIT_FILE": unwritable, "TALLYFY_VAULT_AUDIT": "required"]
        for arguments in [["exec", "--", "printenv", "TALLYFY_TOKEN"], ["token"], ["token", "--format", "helper"], ["export"]] {
            let refused = try sandbox.refused(arguments, status: 74, env: required)
            #expect(refused.stdout.isEmpty, "\(arguments) handed out a token")
            #expect(refused.stderr.contains("audit log \(unwritable)") && refused.stderr.contains("TALLYFY_VAULT_AUDIT=required"), "\(refused.stderr)")
        }
        // A change too, and `init` of a new vault: nothing is written.
        let fresh = sandbox.path("fresh-vault")
        try sandbox.refused(["init"], status: 74, env: required.merging(["TALLYFY_VAULT_FILE": fresh]) { $1 })
        #expect(!FileManager.default.fileExists(atPath: fresh))
        try sandbox.refused(["credentials", "set", "--org", "org-2", "--client-id", "c2", "--secret-stdin", "--token-url", world.emulator.tokenURL,
            "--api-url", world.emulator.apiURL], status: 74, stdin: "s2\n", env: required)

        let warned = try sandbox.ok(["exec", "--", "printenv", "TALLYFY_TOKEN"], env: ["TALLYFY_VAULT_AUDIT_FILE": unwritable])
        #expect(!warned.stdout.isEmpty)
        #expect(warned.stderr.hasPrefix("tallyfy-vault: warning: no audit record written: ") && warned.stderr.split(separator: "\n").count == 1, "\(warned.stderr)")

        let log = try Self.defaultLog(sandbox)
        let before = try Data(contentsOf: URL(fileURLWithPath: log))
        let off = try sandbox.ok(["exec", "--", "true"], env: ["TALLYFY_VAULT_AUDIT": "off"])
        #expect(off.stderr.isEmpty)
        #expect(try Data(contentsOf: URL(fileURLWithPath: log)) == before)
        let status = try sandbox.ok(["status"], env: ["TALLYFY_VAULT_AUDIT": "off"])
        #expect(status.stdout.contains("audit log: off (TALLYFY_VAULT_AUDIT=off)"), "\(status.stdout)")
        #expect(try sandbox.ok(["status"]).stdout.contains("audit log: \(log)"))
        try sandbox.refused(["exec", "--", "true"], status: 64, env: ["TALLYFY_VAULT_AUDIT": "reqired"])
    }
}

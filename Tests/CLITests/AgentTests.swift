import Foundation
import Testing

/// `tallyfy-vault agent` end to end: the real binary as agent and clients,
/// the real emulator, a passphrase vault. Clients get tokens with no unlock
/// source at all and derive no key; the agent renews on its own; it serves
/// only its own uid; and when it is gone, locked or killed, clients fall back.
@Suite struct AgentTests {
    let secret = "cs-\(UUID().uuidString)"

    /// A passphrase vault for a fresh emulator, logged in. The sandbox's
    /// environment has no unlock source: `unlock` holds the passphrase file,
    /// or what the caller gives (AgentMemoryTests: the passphrase itself).
    func world(appTokenTTL: Int? = nil, userTokenTTL: Int? = nil, unlock given: [String: String]? = nil) async throws
        -> (sandbox: Sandbox, emulator: Emulator, unlock: [String: String], socket: String)
    {
        let emulator = try await Emulator.start(clients: [("client-test", secret)], appTokenTTL: appTokenTTL, userTokenTTL: userTokenTTL)
        let sandbox = try Sandbox()
        let unlock = try given ?? ["TALLYFY_VAULT_PASSPHRASE_FILE": try sandbox.write("pp-\(UUID().uuidString)\n", to: "passphrase")]
        try sandbox.ok(["init"], env: unlock)
        try sandbox.ok(["credentials", "set", "--org", "org-test", "--client-id", "client-test", "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: secret, env: unlock)
        try sandbox.ok(["login"], env: unlock)
        let runtime = sandbox.root.appendingPathComponent("run")
        try FileManager.default.createDirectory(at: runtime, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        sandbox.environment["XDG_RUNTIME_DIR"] = runtime.path
        return (sandbox, emulator, unlock, runtime.path + "/tallyfy-vault/agent.sock")
    }

    /// Starts an agent in the foreground (as systemd would) and waits until it answers.
    func startAgent(_ sandbox: Sandbox, unlock: [String: String], extra: [String] = []) throws -> BackgroundCommand {
        let agent = try sandbox.launch(["agent"] + extra, env: unlock)
        let ready = ProcView.waitUntil(seconds: 30) {
            (try? sandbox.run(["agent", "status"]))?.status == 0 || !agent.isRunning
        }
        #expect(ready && agent.isRunning, "the agent did not start: \(agent.isRunning ? "" : agent.wait().brief)")
        return agent
    }

    private func derivations(_ sandbox: Sandbox, _ arguments: [String]) throws -> (RunResult, Int) {
        let log = sandbox.path("kdf-\(UUID().uuidString)")
        let result = try sandbox.run(arguments, env: ["TALLYFY_VAULT_TEST_KDF_LOG": log])
        let lines = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").count
        return (result, lines)
    }

    @Test func clientsGetTokensWithoutUnlockingAndTheAgentRenewsAlone() async throws {
        // Tokens live 6 s: the agent renews each when about 1.5 s are left.
        let (sandbox, emulator, unlock, _) = try await world(appTokenTTL: 6, userTokenTTL: 6)
        defer { _ = emulator.stop() }
        try sandbox.ok(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"], env: unlock)
        try sandbox.ok(["users", "token", "ann@example.com"], env: unlock)
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill(SIGTERM) }

        // No unlock source in the environment, and no key derivation: the agent answers.
        let (exec, execKDF) = try derivations(sandbox, ["exec", "--min-ttl", "1s", "--", "printenv", "TALLYFY_TOKEN"])
        #expect(exec.status == 0 && !exec.stdout.isEmpty, "\(exec.brief)")
        #expect(execKDF == 0, "exec through the agent derived a key")
        let (user, userKDF) = try derivations(sandbox, ["token", "--user", "ann@example.com", "--min-ttl", "1s"])
        #expect(user.status == 0 && userKDF == 0, "\(user.brief)")

        // With no client running, the agent renews both tokens, repeatedly.
        let before = try await emulator.counts()
        let renewed = await eventually(seconds: 60) {
            guard let counts = try? await emulator.counts() else { return false }
            return counts["token", default: 0] >= before["token", default: 0] + 2
                && counts["users.token", default: 0] >= before["users.token", default: 0] + 2
        }
        #expect(renewed, "the agent did not renew on its own: \(agent.stderrSoFar)")
        #expect(agent.stderrSoFar.contains("renewed the application token of profile default"))
        #expect(agent.stderrSoFar.contains("renewed the token of ann@example.com"))

        // A client asking for 2 s never gets less while the emulator is up.
        for _ in 0..<10 {
            let json = try sandbox.ok(["token", "--min-ttl", "2s", "--format", "json"]).stdout
            let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
            #expect((object["expiresInSeconds"] as? Int ?? 0) >= 1, "a token with too little life: \(object["expiresInSeconds"] ?? "?")")
        }
        // Nothing secret in the agent's log.
        #expect(!agent.stderrSoFar.contains(secret) && !agent.stderrSoFar.contains("eyJ"))
    }

    @Test func lockedStoppedOrKilledAgentsMakeClientsFallBack() async throws {
        let (sandbox, emulator, unlock, socket) = try await world()
        defer { _ = emulator.stop() }
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        let token = try sandbox.ok(["token"]).stdout

        // A second agent on the same socket is refused, clearly.
        let second = try sandbox.run(["agent"], env: unlock)
        #expect(second.status == 64 && second.stderr.contains("an agent is already running on \(socket)"), "\(second.brief)")

        // --no-agent skips it: without an unlock source that fails as before.
        try sandbox.refused(["token", "--no-agent"], status: 78)
        try sandbox.refused(["exec", "--no-agent", "--", "true"], status: 78)

        // Locked: clients unlock for themselves (here: they can't, 78; with a passphrase they do).
        try sandbox.ok(["agent", "lock"])
        try sandbox.refused(["token"], status: 78)
        #expect(try sandbox.ok(["token"], env: unlock).stdout == token)
        #expect(agent.stderrSoFar.contains("forgot the key: asked to by `agent lock`"))

        // Killed with SIGKILL: the stale socket stays; clients fall back;
        // a new agent replaces the stale socket.
        agent.kill()
        _ = agent.wait()
        #expect(FileManager.default.fileExists(atPath: socket))
        #expect(try sandbox.ok(["exec", "--", "printenv", "TALLYFY_TOKEN"], env: unlock).stdout == token)
        let again = try startAgent(sandbox, unlock: unlock)
        #expect(try sandbox.ok(["token"]).stdout == token)
        try sandbox.ok(["agent", "stop"])
        #expect(again.wait().status == 0)
        #expect(!FileManager.default.fileExists(atPath: socket), "agent stop left its socket")
    }

    /// SIGKILL while the agent waits for Tallyfy inside a renewal (holding
    /// the vault lock): the lock dies with it, the vault opens, nothing is
    /// lost, and clients fall back.
    @Test func killingTheAgentInTheMiddleOfARenewalLosesNothing() async throws {
        let (sandbox, emulator, unlock, _) = try await world(appTokenTTL: 4)
        defer { _ = emulator.stop() }
        let before = try sandbox.vaultBytes()
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "delay", delayMs: 60_000))
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        // The agent's renewal has reached Tallyfy (and holds the vault lock).
        // With a 4 s token it gives up after 1 s (`TokenPolicy.patienceUnderLock`)
        // and tries again, so a slow poll may first see a later attempt.
        let inRenewal = await eventually(seconds: 30) { (try? await emulator.counts()["token"]) ?? 0 >= 2 }
        #expect(inRenewal, "the agent did not start a renewal: \(agent.stderrSoFar)")
        agent.kill()
        _ = agent.wait()
        #expect(try sandbox.vaultBytes() == before, "a renewal killed midway changed the vault")
        try await emulator.clearFaults()
        // The lock was released with the process: a writer gets it at once.
        try sandbox.ok(["login"], env: unlock.merging(["TALLYFY_VAULT_LOCK_TIMEOUT": "0"]) { $1 })
        try sandbox.ok(["exec", "--", "true"], env: unlock)
    }

    /// Renewals that hang (Tallyfy answers after a minute) hold up no one:
    /// more of them than the agent has serving threads, and a client whose
    /// sealed token is fresh enough is still answered by the agent at once.
    @Test func aSlowRenewalHoldsUpNoOtherClient() async throws {
        let (sandbox, emulator, unlock, _) = try await world()
        defer { _ = emulator.stop() }
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        let token = try sandbox.ok(["token"]).stdout
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "delay", delayMs: 60_000))
        // A 7-day token never satisfies --min-ttl 8d: each of these makes the agent renew.
        let waiting = try (0..<6).map { _ in try sandbox.launch(["token", "--min-ttl", "8d"]) }
        defer { waiting.forEach { $0.kill() } }
        let stuck = await eventually(seconds: 30) { (try? await emulator.counts()["token"]) ?? 0 >= 2 }
        #expect(stuck, "no renewal reached Tallyfy: \(agent.stderrSoFar)")
        let (fresh, kdf) = try derivations(sandbox, ["token"])
        #expect(fresh.status == 0 && fresh.stdout == token && kdf == 0, "\(fresh.brief)")
        #expect(!agent.stderrSoFar.contains("renewed"), "the hanging renewal finished early: \(agent.stderrSoFar)")
        try await emulator.clearFaults()
    }

    /// Renewals in the agent take turns (they need the same vault lock, and
    /// waiting for it would block the few threads every task of the agent
    /// shares): six clients that all need a renewal at once, while Tallyfy
    /// is slow, get one new token from one request.
    @Test func clientsRenewingAtOnceMakeOneRequest() async throws {
        let (sandbox, emulator, unlock, _) = try await world(appTokenTTL: 3_600)
        defer { _ = emulator.stop() }
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        let old = try sandbox.ok(["token"]).stdout
        try await emulator.setLifetimes(app: 7 * 86_400)
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "delay", delayMs: 2_000))
        let before = try await emulator.counts()["token"] ?? 0
        // The sealed token has an hour left; each client wants two.
        let clients = try (0..<6).map { _ in try sandbox.launch(["token", "--min-ttl", "2h"]) }
        let results = clients.map { $0.wait() }
        for result in results { #expect(result.status == 0, "\(result.brief)\n\(agent.stderrSoFar)") }
        #expect(Set(results.map(\.stdout)).count == 1 && results[0].stdout != old, "not one new token: \(agent.stderrSoFar)")
        let requests = try await emulator.counts()["token"] ?? 0
        #expect(requests - before == 1, "\(requests - before) token requests for one renewal")
        try await emulator.clearFaults()
    }

    /// For its whole life the agent is not dumpable (its /proc files are
    /// root's) and its core limit is 0; run as `nobody` to see it (as root,
    /// every /proc file is root's anyway).
    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")))
    func theAgentIsNeverDumpable() async throws {
        let secret = "cs-\(UUID().uuidString)"
        let emulator = try await Emulator.start(clients: [("client-test", secret)])
        defer { _ = emulator.stop() }
        let world = try NobodysVault(emulator: emulator, client: "client-test", secret: secret, kdf: nil)
        defer { world.remove() }
        let runtime = world.folder.appendingPathComponent("run")
        try FileManager.default.createDirectory(at: runtime, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        #expect(chown(runtime.path, NobodysVault.nobody, gid_t(NobodysVault.nobody)) == 0)
        let agent = try world.run(["agent"], env: ["XDG_RUNTIME_DIR": runtime.path])
        defer { agent.kill() }
        let socket = runtime.path + "/tallyfy-vault/agent.sock"
        let ready = ProcView.waitUntil(seconds: 30) { FileManager.default.fileExists(atPath: socket) || !agent.isRunning }
        #expect(ready && agent.isRunning, "the agent did not start: \(agent.isRunning ? "" : agent.wait().brief)")
        for file in ["status", "environ", "mem", "maps"] {
            #expect(ProcView.owner(pid: agent.pid, file: file) == 0, "/proc/PID/\(file) is not root's: the agent is dumpable")
        }
        #expect(ProcView.coreLimit(pid: agent.pid)?.soft == "0")
    }

    /// `exec --keep-fresh` renews through the agent: no unlock source needed.
    @Test func keepFreshRenewsThroughTheAgent() async throws {
        let (sandbox, emulator, unlock, _) = try await world()
        defer { _ = emulator.stop() }
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        let token = try sandbox.ok(["token"]).stdout.trimmingCharacters(in: .newlines)
        try sandbox.refused(["exec", "--keep-fresh", "--no-agent", "--", "true"], status: 78)
        let result = try sandbox.ok(["exec", "--keep-fresh", "--", "sh", "-c", "cat \"$TALLYFY_TOKEN_FILE\""])
        #expect(result.stdout == token, "\(result.brief)")
    }

    @Test func theIdleTimeoutForgetsTheKey() async throws {
        let (sandbox, emulator, unlock, _) = try await world()
        defer { _ = emulator.stop() }
        let agent = try startAgent(sandbox, unlock: unlock, extra: ["--idle-timeout", "2s"])
        defer { agent.kill() }
        try sandbox.ok(["token"])
        let locked = ProcView.waitUntil(seconds: 30) {
            (try? sandbox.run(["agent", "status"]))?.stdout.contains("key: forgotten") == true
        }
        #expect(locked, "\(agent.stderrSoFar)")
        #expect(agent.stderrSoFar.contains("--idle-timeout"))
        try sandbox.refused(["token"], status: 78)
    }

    @Test func aKeySlotChangeMakesTheAgentForgetTheKey() async throws {
        let (sandbox, emulator, unlock, _) = try await world()
        defer { _ = emulator.stop() }
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        try sandbox.ok(["token"])
        try sandbox.ok(["keygen", sandbox.path("key2")])
        try sandbox.ok(["keys", "add", "--new-key-file", sandbox.path("key2")], env: unlock)
        try sandbox.refused(["token"], status: 78)
        #expect(agent.stderrSoFar.contains("forgot the key: the vault's key slots changed"))
    }

    /// The agent answers from the vault it holds only while the vault's file
    /// is the one it read: every change by the CLI replaces the file, and is
    /// in the very next answer.
    @Test func aChangeByTheCLIIsInTheNextAnswer() async throws {
        let (sandbox, emulator, unlock, _) = try await world()
        defer { _ = emulator.stop() }
        try sandbox.ok(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"], env: unlock)
        try sandbox.ok(["users", "token", "ann@example.com"], env: unlock)
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        let first = try sandbox.ok(["token"]).stdout
        #expect(try sandbox.ok(["token"]).stdout == first)

        // A new application token sealed by the CLI (`login` never asks the agent).
        try sandbox.ok(["login"], env: unlock)
        let second = try sandbox.ok(["token"]).stdout
        #expect(second != first, "the agent handed out the token it held before `login`")
        #expect(try sandbox.ok(["token", "--no-agent"], env: unlock).stdout == second)

        // `users forget`: the agent no longer has that token to give.
        try sandbox.ok(["token", "--user", "ann@example.com", "--no-refresh"])
        try sandbox.ok(["users", "forget", "ann@example.com"], env: unlock)
        let forgotten = try sandbox.refused(["token", "--user", "ann@example.com", "--no-refresh"], status: 78)
        #expect(forgotten.stderr.contains("no valid user token for ann@example.com is sealed"), "\(forgotten.brief)")

        // `credentials set` drops the application token (it belonged to the
        // old client): the agent has none to give, and renews when allowed.
        try sandbox.ok(["credentials", "set", "--org", "org-test", "--client-id", "client-test", "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: secret, env: unlock)
        let dropped = try sandbox.refused(["token", "--no-refresh"], status: 78)
        #expect(dropped.stderr.contains("no valid application token for profile \"default\" is sealed"), "\(dropped.brief)")
        let renewed = try sandbox.ok(["token"]).stdout
        #expect(renewed != second && !renewed.isEmpty)
        #expect(try sandbox.ok(["token", "--no-agent"], env: unlock).stdout == renewed)
        #expect(!agent.stderrSoFar.contains("forgot the key"), "\(agent.stderrSoFar)")
    }

    /// `rekey` (a new data key) and `keys remove` leave the agent's key unable
    /// to open the vault: it forgets the key at the next request, and clients
    /// unlock for themselves.
    @Test func aRekeyOrARemovedSlotMakesTheAgentForgetTheKey() async throws {
        let (sandbox, emulator, unlock, _) = try await world()
        defer { _ = emulator.stop() }
        let token = try sandbox.ok(["token"], env: unlock).stdout
        for change in [["rekey"], ["keys", "remove", "backup"]] {
            if change.first == "keys" {
                try sandbox.ok(["keygen", sandbox.path("key2")])
                try sandbox.ok(["keys", "add", "--new-key-file", sandbox.path("key2"), "--label", "backup"], env: unlock)
            }
            let agent = try startAgent(sandbox, unlock: unlock)
            defer { agent.kill() }
            #expect(try sandbox.ok(["token"]).stdout == token)
            try sandbox.ok(change, env: unlock)
            try sandbox.refused(["token"], status: 78)
            #expect(agent.stderrSoFar.contains("forgot the key: the vault's key slots changed"), "\(agent.stderrSoFar)")
            #expect(try sandbox.ok(["token"], env: unlock).stdout == token)
            agent.kill()
            _ = agent.wait()
        }
    }

    /// The socket's file and folder must be ours, and so must the process
    /// answering: a socket owned by another user is not used.
    @Test func aSocketOwnedByAnotherUserIsNotTrusted() async throws {
        let (sandbox, emulator, unlock, socket) = try await world()
        defer { _ = emulator.stop() }
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        try sandbox.ok(["token"])
        #expect(chown(socket, 65534, 65534) == 0)
        try sandbox.refused(["token"], status: 78)
        #expect(chown(socket, getuid(), getgid()) == 0)
        try sandbox.ok(["token"])
    }

    /// Another uid reaching the socket (its folder and file opened up on
    /// purpose here) is refused by the agent itself and logged.
    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")
        && FileManager.default.isExecutableFile(atPath: "/usr/bin/python3")))
    func anotherUidIsRefusedAndLogged() async throws {
        let (sandbox, emulator, unlock, socket) = try await world()
        defer { _ = emulator.stop() }
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        for path in [sandbox.root.path, sandbox.path("run"), sandbox.path("run/tallyfy-vault")] { chmod(path, 0o711) }
        chmod(socket, 0o777)
        // A raw client as nobody: a valid frame asking for a token.
        let script = """
            import json, socket, struct, sys
            s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
            body = json.dumps({"version": 1, "op": "status"}).encode()
            try:
                s.sendall(struct.pack(">I", len(body)) + body)
                print("answer" if s.recv(4) else "closed")
            except (BrokenPipeError, ConnectionResetError):
                print("closed")
            """
        let result = try runProcess(URL(fileURLWithPath: "/usr/bin/setpriv"),
            ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script, socket], environment: sandbox.environment)
        #expect(result.stdout == "closed\n", "\(result.brief) \(result.stdout)")
        #expect(ProcView.waitUntil(seconds: 10) { agent.stderrSoFar.contains("refused a connection from uid 65534") }, "\(agent.stderrSoFar)")
    }

    @Test func detachPrintsTheVariablesAndTheAgentServes() async throws {
        let (sandbox, emulator, unlock, socket) = try await world()
        defer { _ = emulator.stop() }
        let detached = try sandbox.ok(["agent", "--detach"], env: unlock)
        let line = detached.stdout.trimmingCharacters(in: .newlines)
        let pid = try #require(line.split(separator: ";").first { $0.contains("TALLYFY_VAULT_AGENT_PID=") }
            .flatMap { Int32($0.split(separator: "=").last ?? "") })
        defer { kill(pid, SIGKILL) }
        #expect(line == "TALLYFY_VAULT_AGENT_SOCK=\(socket); export TALLYFY_VAULT_AGENT_SOCK; TALLYFY_VAULT_AGENT_PID=\(pid); export TALLYFY_VAULT_AGENT_PID;")
        let (exec, kdf) = try derivations(sandbox, ["exec", "--", "printenv", "TALLYFY_TOKEN"])
        #expect(exec.status == 0 && kdf == 0, "\(exec.brief)")
        // Its /proc files are root's (not dumpable) and its core limit is 0.
        #expect(ProcView.coreLimit(pid: pid)?.soft == "0")
        // Tallyfy CLI's apiKeyHelper is answered by the launcher alone.
        let alone = try BuildProducts.copy(into: sandbox.root.appendingPathComponent("alone"), withCLI: false)
        let helper = try runProcess(alone, ["token", "--format", "helper", "--min-ttl", "1m"], environment: sandbox.environment)
        #expect(helper.status == 0 && helper.stdout.hasPrefix("{\"expiresInSeconds\":") && helper.stdout.contains("\"token\":\"ey"),
            "\(helper.brief)")
        #expect(try runProcess(alone, ["token", "--format", "raw"], environment: sandbox.environment).status == 78)
        let doctor = try sandbox.run(["doctor"], env: unlock)
        #expect(doctor.stdout.contains("holds the key, for this vault"), "\(doctor.stdout)")
        // The passphrase is nowhere in its environment.
        let environ = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))) ?? Data()
        #expect(!String(decoding: environ, as: UTF8.self).contains("TALLYFY_VAULT_PASSPHRASE"))
        try sandbox.ok(["agent", "stop"])
    }
}

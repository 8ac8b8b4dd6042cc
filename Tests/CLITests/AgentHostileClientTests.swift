import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Issue 24: the agent against clients that misbehave (hang up before the
/// answer, trickle a request, send what docs/agent.md does not define), and
/// clients against an agent that answers nonsense. Frames are written and
/// read by hand here, from docs/agent.md alone.
extension AgentTests {
    /// F1: hanging up before the answer (at once, or with the read side shut
    /// so the agent's write is certain to find no reader) never ends the agent.
    @Test func clientsThatHangUpNeverStopTheAgent() async throws {
        let (sandbox, emulator, unlock, socket) = try await world()
        defer { _ = emulator.stop() }
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        let token = RawFrame.json(["version": 1, "op": "token", "vault": realPath(sandbox.vaultPath), "profile": "default",
            "minimumLifetime": 60, "renewal": "whenStale"])
        for round in 0..<20 {
            for body in [RawFrame.json(["version": 1, "op": "status"]), token] {
                let connection = try #require(RawFrame.connect(socket))
                if round % 2 == 0 { shutdown(connection, Int32(SHUT_RD)) }
                RawFrame.send(RawFrame.header(body.count) + body, on: connection)
                close(connection)
            }
        }
        #expect(agent.isRunning, "the agent died: \(agent.isRunning ? "" : agent.wait().brief)")
        try sandbox.ok(["agent", "status"])
        #expect(try sandbox.ok(["token"]).stdout.hasPrefix("ey"))
        #expect(ProcView.waitUntil(seconds: 10) { agent.stderrSoFar.contains("hung up before its answer; still serving") },
            "\(agent.stderrSoFar)")
    }

    /// An unknown `op`, an unknown `renewal`, another version, JSON that is
    /// no request: each gets `bad-request`, never silence and never a default.
    @Test func whatTheProtocolDoesNotDefineGetsBadRequest() async throws {
        let (sandbox, emulator, unlock, socket) = try await world()
        defer { _ = emulator.stop() }
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        let vault = realPath(sandbox.vaultPath)
        let before = try Data(contentsOf: URL(fileURLWithPath: sandbox.vaultPath))
        for body in [
            RawFrame.json(["version": 1, "op": "frobnicate"]),
            RawFrame.json(["version": 1, "op": "TOKEN", "vault": vault, "profile": "default", "minimumLifetime": 60]),
            RawFrame.json(["version": 1, "op": "token", "vault": vault, "profile": "default", "minimumLifetime": 60, "renewal": "always"]),
            RawFrame.json(["version": 1, "op": "token", "vault": vault, "profile": "default", "minimumLifetime": 60, "renewal": "sometimes"]),
            RawFrame.json(["version": 2, "op": "status"]),
            RawFrame.json(["op": "status"]),
            RawFrame.json(["version": 1, "op": 7]),
            Array("{\"version\":1,\"op\":".utf8),
            Array("[]".utf8),
        ] {
            let answer = try #require(try RawFrame.exchange(body, socket: socket), "no answer to \(String(decoding: body, as: UTF8.self))")
            #expect(answer["ok"] as? Bool == false && answer["error"] as? String == "bad-request",
                "\(String(decoding: body, as: UTF8.self)) → \(answer)")
            #expect((answer["message"] as? String)?.isEmpty == false)
        }
        // The known words still work, and nothing was renewed or written.
        let status = try #require(try RawFrame.exchange(RawFrame.json(["version": 1, "op": "status"]), socket: socket))
        #expect(status["ok"] as? Bool == true)
        #expect(try Data(contentsOf: URL(fileURLWithPath: sandbox.vaultPath)) == before)
    }

    /// F3: clients that send a header and then a byte now and then hold no
    /// accept thread (there are 4): `status`, `lock` and `stop` still answer,
    /// and each trickler is dropped at its frame's deadline.
    @Test func tricklingClientsHoldUpNoOne() async throws {
        let (sandbox, emulator, unlock, socket) = try await world()
        defer { _ = emulator.stop() }
        let agent = try startAgent(sandbox, unlock: unlock)
        defer { agent.kill() }
        let tricklers = try (0..<8).map { _ in try #require(RawFrame.connect(socket)) }
        let progress = Tricklers()
        let threads = tricklers.map { connection in
            Thread {
                // A 65,535-byte frame, one byte every 200 ms: never finished.
                guard RawFrame.send([0, 0, 0xff, 0xff], on: connection) else { return }
                progress.started()
                while !progress.stopping {
                    usleep(200_000)
                    guard RawFrame.send([UInt8(ascii: " ")], on: connection) else { return }
                }
            }
        }
        threads.forEach { $0.start() }
        defer {
            progress.stop()
            tricklers.forEach { close($0) }
        }
        #expect(ProcView.waitUntil(seconds: 5) { progress.count == tricklers.count })
        try sandbox.ok(["agent", "status"])
        try sandbox.ok(["agent", "lock"])
        #expect(ProcView.waitUntil(seconds: 20) {
            agent.stderrSoFar.components(separatedBy: "no whole request within 5 s").count - 1 >= tricklers.count
        }, "\(agent.stderrSoFar)")
        try sandbox.ok(["agent", "stop"])
        #expect(agent.wait().status == 0)
    }
}

extension AgentTests {
    /// F13: without XDG_RUNTIME_DIR, another user made /tmp/tallyfy-vault-UID
    /// first. The agent refuses it, listens in a fresh private folder, says
    /// so, and `--detach` prints that socket. Run as nobody (65534), whose
    /// folder in /tmp no other test uses.
    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")))
    func aSquattedTmpFolderIsRefusedAndTheAgentListensElsewhere() throws {
        let squatted = "/tmp/tallyfy-vault-65534"
        guard !FileManager.default.fileExists(atPath: squatted) else { return }  // nobody's own: not ours to touch
        let home = URL(fileURLWithPath: "/tmp/tv-nobody-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(at: home) }
        let launcher = try BuildProducts.copy(into: home.appendingPathComponent("bin"))
        #expect(chown(home.path, 65534, 65534) == 0)
        try FileManager.default.createDirectory(atPath: squatted, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: squatted) }  // root's: "another user's" to nobody
        let environment = ["PATH": "/usr/bin:/bin", "HOME": home.path, "TALLYFY_VAULT_TEST_KDF": "fast",
            "TALLYFY_VAULT_FILE": home.path + "/vault", "TALLYFY_VAULT_KEY_FILE": home.path + "/key"]
        func asNobody(_ arguments: [String], _ extra: [String: String] = [:]) throws -> RunResult {
            try runProcess(URL(fileURLWithPath: "/usr/bin/setpriv"),
                ["--reuid=65534", "--regid=65534", "--clear-groups", launcher.path] + arguments,
                environment: environment.merging(extra) { $1 })
        }
        #expect(try asNobody(["keygen", home.path + "/key"]).status == 0)
        #expect(try asNobody(["init"]).status == 0)
        let detached = try asNobody(["agent", "--detach"])
        #expect(detached.status == 0, "\(detached.brief)")
        let line = detached.stdout.trimmingCharacters(in: .newlines)
        let socket = line.split(separator: ";").first { $0.hasPrefix("TALLYFY_VAULT_AGENT_SOCK=") }
            .map { String($0.dropFirst("TALLYFY_VAULT_AGENT_SOCK=".count)) } ?? ""
        let pid = line.split(separator: ";").first { $0.contains("TALLYFY_VAULT_AGENT_PID=") }
            .flatMap { Int32($0.split(separator: "=").last ?? "") }
        defer {
            if let pid { kill(pid, SIGKILL) }
            if !socket.isEmpty { try? FileManager.default.removeItem(atPath: (socket as NSString).deletingLastPathComponent) }
        }
        #expect(socket.hasPrefix(squatted + ".") && socket.hasSuffix("/agent.sock"), "\(line)")
        #expect(detached.stderr.contains("\(squatted) belongs to another user (uid 0); using the new private folder"), "\(detached.stderr)")
        let status = try asNobody(["agent", "status"], ["TALLYFY_VAULT_AGENT_SOCK": socket])
        #expect(status.status == 0, "\(status.brief)")
        #expect(try asNobody(["agent", "stop"], ["TALLYFY_VAULT_AGENT_SOCK": socket]).status == 0)
    }
}

/// How far the trickling clients got, and when they should stop.
final class Tricklers: Sendable {
    private let state = Mutex((count: 0, stopping: false))
    var count: Int { state.withLock { $0.count } }
    var stopping: Bool { state.withLock { $0.stopping } }
    func started() { state.withLock { $0.count += 1 } }
    func stop() { state.withLock { $0.stopping = true } }
}

/// What clients do with an agent's answers (F15): a fake agent, on a socket
/// that passes every check, answers what each test sets.
@Suite struct AgentAnswerChecksTests {
    @Test func aGrantThatDoesNotFitIsNotUsed() async throws {
        let world = try await LoggedIn.start()
        defer { _ = world.emulator.stop() }
        let sandbox = world.sandbox
        let real = try sandbox.ok(["token", "--no-agent"]).stdout.trimmingCharacters(in: .newlines)
        let fake = try FakeAgent(in: sandbox)
        defer { fake.stop() }
        let agentEnv = ["TALLYFY_VAULT_AGENT_SOCK": fake.socket]
        func grant(_ changes: [String: Any]) -> [String: Any] {
            var grant: [String: Any] = ["profile": "default", "orgID": "org-test", "apiURL": world.emulator.apiURL,
                "token": "fake.agent.token", "expiresAt": Date().timeIntervalSince1970 + 7200]
            for (key, value) in changes { grant[key] = value }
            return ["version": 1, "ok": true, "grant": grant]
        }
        // A sane grant is used as is: the fake is asked, and believed.
        fake.answer(grant([:]))
        #expect(try sandbox.ok(["token"], env: agentEnv).stdout.trimmingCharacters(in: .newlines) == "fake.agent.token")
        #expect(try sandbox.ok(["exec", "--", "printenv", "TALLYFY_TOKEN"], env: agentEnv).stdout.trimmingCharacters(in: .newlines)
            == "fake.agent.token")
        for (what, changes) in [
            ("expired in 1970", ["expiresAt": 1.0]),
            ("expires before the minimum asked", ["expiresAt": Date().timeIntervalSince1970 + 60]),
            ("a 100 KB token", ["token": String(repeating: "x", count: 100_000)]),
            ("a token with a line break", ["token": "fake\ntoken"]),
            ("another profile", ["profile": "other"]),
            ("a user token for the application token", ["user": "eve@example.com"]),
            ("an absurd expiry", ["expiresAt": 1e300]),
        ] as [(String, [String: Any])] {
            fake.answer(grant(changes))
            let asked = fake.served
            // Compared here, never printed: a token stays out of the test's output.
            let token = try sandbox.ok(["token"], env: agentEnv).stdout.trimmingCharacters(in: .newlines) == real
            #expect(token, "\(what): the client used the agent's grant")
            let exec = try sandbox.ok(["exec", "--", "printenv", "TALLYFY_TOKEN"], env: agentEnv).stdout.trimmingCharacters(in: .newlines) == real
            #expect(exec, "\(what): exec used the agent's grant")
            #expect(fake.served >= asked + 2, "\(what): the fake agent was not asked")
        }
    }

    @Test func anAgentsTextReachesTheTerminalEscaped() async throws {
        let world = try await LoggedIn.start()
        defer { _ = world.emulator.stop() }
        let sandbox = world.sandbox
        let fake = try FakeAgent(in: sandbox)
        defer { fake.stop() }
        fake.answer(["version": 1, "ok": false, "error": "failed", "exitStatus": 69,
            "message": "boom\u{1b}]0;owned\u{7}\nforged: line", "hint": "\u{1b}[2Jcleared"])
        let result = try sandbox.refused(["token"], status: 69, env: ["TALLYFY_VAULT_AGENT_SOCK": fake.socket])
        #expect(!result.stderr.contains("\u{1b}") && !result.stderr.contains("\u{7}"), "\(result.stderr.debugDescription)")
        #expect(!result.stderr.contains("\nforged"), "\(result.stderr.debugDescription)")
        #expect(result.stderr.contains("boom\\u{1b}]0;owned\\u{7}\\u{a}forged: line"), "\(result.stderr.debugDescription)")
        #expect(fake.served >= 1)
    }
}

/// A stand-in agent: a socket in a 0700 folder of the sandbox that reads one
/// frame per connection and answers `answer`.
final class FakeAgent: @unchecked Sendable {
    let socket: String
    private let listener: Int32
    private let state = Mutex<(answer: [UInt8], served: Int, stopped: Bool)>(([], 0, false))

    /// What it answers from now on.
    func answer(_ object: [String: Any]) {
        let body = RawFrame.json(object)
        state.withLock { $0.answer = body }
    }
    var served: Int { state.withLock { $0.served } }

    init(in sandbox: Sandbox) throws {
        let folder = sandbox.path("fake-agent")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        socket = folder + "/agent.sock"
        listener = socket.withCString { path in RawFrame.listen(path) }
        guard listener >= 0 else { throw RawFrame.Failure(what: "could not listen on \(socket)") }
        Thread { [self] in serve() }.start()
    }

    private func serve() {
        while !state.withLock({ $0.stopped }) {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { continue }
            _ = RawFrame.receive(on: connection)
            let body = state.withLock { state -> [UInt8] in
                state.served += 1
                return state.answer
            }
            RawFrame.send(RawFrame.header(body.count) + body, on: connection)
            close(connection)
        }
    }

    func stop() {
        state.withLock { $0.stopped = true }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }
}

/// docs/agent.md's frames by hand: a 4-byte big-endian length, then JSON.
enum RawFrame {
    struct Failure: Error { var what: String }

    static func json(_ object: [String: Any]) -> [UInt8] {
        Array((try? JSONSerialization.data(withJSONObject: object)) ?? Data())
    }

    static func header(_ count: Int) -> [UInt8] {
        [UInt8(count >> 24 & 0xff), UInt8(count >> 16 & 0xff), UInt8(count >> 8 & 0xff), UInt8(count & 0xff)]
    }

    static func address(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    static func connect(_ path: String) -> Int32? {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = address(path)
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            close(descriptor)
            return nil
        }
        return descriptor
    }

    static func listen(_ path: UnsafePointer<CChar>) -> Int32 {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = address(String(cString: path))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, Glibc.listen(descriptor, 16) == 0 else { return -1 }
        return descriptor
    }

    /// Writes all of `bytes`; `false` once the other end is gone (no SIGPIPE).
    @discardableResult
    static func send(_ bytes: [UInt8], on descriptor: Int32) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            sent += n
        }
        return true
    }

    static func readExactly(_ count: Int, on descriptor: Int32) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress! + got, count - got) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            got += n
        }
        return buffer
    }

    static func receive(on descriptor: Int32) -> [UInt8]? {
        guard let header = readExactly(4, on: descriptor) else { return nil }
        let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        return readExactly(length, on: descriptor)
    }

    /// One request frame with `body`, and the answer as a JSON object (nil: none came).
    static func exchange(_ body: [UInt8], socket: String) throws -> [String: Any]? {
        guard let connection = connect(socket) else { throw Failure(what: "no agent on \(socket)") }
        defer { close(connection) }
        guard send(header(body.count) + body, on: connection), let answer = receive(on: connection) else { return nil }
        return try JSONSerialization.jsonObject(with: Data(answer)) as? [String: Any]
    }
}

func realPath(_ path: String) -> String {
    guard let real = realpath(path, nil) else { return path }
    defer { free(real) }
    return String(cString: real)
}

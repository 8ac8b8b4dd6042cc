import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The clients of the standing proxy's Unix socket: one Python program, its
/// mode its first argument, the socket its second. It reports what it saw as
/// JSON and never prints the capability or a token. It uses only the
/// standard library, so that another user can run a copy of it with the
/// system's python3.
enum ProxySocketClient {
    static let script = #"""
        import errno, http.client, json, os, socket, sys, time, urllib.parse

        API = os.environ["TALLYFY_API_URL"]
        ORG = os.environ["TALLYFY_ORG_ID"]
        CAP = os.environ.get("TALLYFY_API_TOKEN")
        u = urllib.parse.urlsplit(API)
        ME = f"{u.path}/organizations/{ORG}/me"
        mode, SOCKET = sys.argv[1], sys.argv[2]

        class UnixConnection(http.client.HTTPConnection):
            """HTTP over the proxy's Unix socket, as curl --unix-socket does."""
            def __init__(self):
                super().__init__("localhost", timeout=60)
            def connect(self):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(60)
                s.connect(SOCKET)
                self.sock = s

        \#(ProxyChild.untilTwoNewTokens)

        def call(c, path, token=None, method="GET", headers=None):
            h = {"Accept": "application/json", "X-Tallyfy-Client": "APIClient"}
            if token is not None:
                h["Authorization"] = "Bearer " + token
            h.update(headers or {})
            c.request(method, path, headers=h)
            r = c.getresponse()
            data = r.read()
            try:
                parsed = json.loads(data)
            except Exception:
                parsed = {}
            return [r.status, parsed.get("code") or parsed.get("kind")]

        if mode == "same-user":
            c = UnixConnection()
            out = {}
            out["noCapability"] = call(c, ME)
            out["capability"] = call(c, ME, token=CAP)
            out["wrongCapability"] = call(c, ME, token="tvproxy_" + "0" * 64)
            out["tokenEndpoint"] = call(c, "/oauth/token", method="POST")
            out["outsideAllow"] = call(c, f"{u.path}/organizations/{ORG}/users")
            out["anyHost"] = call(c, ME, headers={"Host": "example.invalid"})
            out["last"] = call(c, ME)
            # The TCP port still wants the capability.
            out["tcpNoCapability"] = call(http.client.HTTPConnection(u.hostname, u.port, timeout=60), ME)
            print(json.dumps(out))
        elif mode == "other-user":
            # Run as another uid: either the kernel keeps it out of the
            # private folder, or the proxy closes the connection unread.
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            try:
                s.connect(SOCKET)
            except OSError as e:
                print(json.dumps({"connect": errno.errorcode.get(e.errno, str(e.errno))}))
                sys.exit(0)
            answer, ending = b"", "eof"
            try:
                s.sendall(f"GET {ME} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n".encode())
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            except (BrokenPipeError, ConnectionResetError):
                ending = "reset"
            except socket.timeout:
                ending = "timeout"
            print(json.dumps({"connect": "ok", "answered": len(answer), "ending": ending, "uid": os.getuid()}))
        elif mode == "expiry":
            # Over the socket without the capability.
            c = UnixConnection()
            def ask():
                c.request("GET", ME, headers={"Accept": "application/json"})
                r = c.getresponse()
                return r.status, json.loads(r.read() or b"{}")
            print(json.dumps({"seen": until_two_new_tokens(ask, float(sys.argv[3]))}))
        """#
}

/// The standing proxy's Unix socket, and the proxy on a running agent:
/// the real binary, the real emulator, real clients (one as another user).
extension ProxyTests {
    /// `proxy --detach`'s variables.
    func proxyVariables(_ started: RunResult) -> [String: String] {
        var variables: [String: String] = [:]
        for line in started.stdout.split(separator: "\n") {
            let assignment = line.split(separator: ";")[0].split(separator: "=", maxSplits: 1).map(String.init)
            if assignment.count == 2 { variables[assignment[0]] = assignment[1] }
        }
        return variables
    }

    /// The environment of a tool that is not the vault's child: the proxy's
    /// variables, minus those `drop` names.
    func toolEnvironment(_ sandbox: Sandbox, _ variables: [String: String], drop: [String] = []) -> [String: String] {
        var environment = ["PATH": sandbox.environment["PATH"] ?? "/usr/bin:/bin", "HOME": sandbox.root.path]
        environment.merge(variables) { $1 }
        for name in drop { environment[name] = nil }
        return environment
    }

    func mode(_ path: String) -> mode_t {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode : 0
    }

    /// Polls `proxy status` (its counts are written once a second) until its
    /// output satisfies `condition`.
    func proxyStatus(_ sandbox: Sandbox, until condition: (String) -> Bool) -> String {
        var last = ""
        _ = ProcView.waitUntil(seconds: 30) {
            last = (try? sandbox.run(["proxy", "status"]))?.stdout ?? ""
            return condition(last)
        }
        return last
    }

    /// The renewals in a counts line (`…, 2 renewals, …`).
    func renewals(in text: String) -> Int {
        guard let match = text.firstMatch(of: #/in all: .*?, (\d+) renewals?,/#) ?? text.firstMatch(of: #/proxy: .*?, (\d+) renewals?,/#) else {
            return -1
        }
        return Int(match.1) ?? -1
    }

    @Test func theUnixSocketServesItsOwnUidWithoutTheCapability() async throws {
        let (sandbox, emulator, _) = try await world()
        defer { emulator.stop() }
        let client = try sandbox.write(ProxySocketClient.script, to: "socket-client.py")
        let started = try sandbox.ok(["proxy", "--detach", "--allow", "GET:/organizations/*/me"])
        let variables = proxyVariables(started)
        defer { _ = try? sandbox.run(["proxy", "stop"]) }
        let socket = try #require(variables["TALLYFY_VAULT_PROXY_SOCK"], "\(started.brief)")
        #expect(socket == sandbox.path("run/tallyfy-vault/proxy.sock"))
        #expect(started.stdout.contains("export TALLYFY_VAULT_PROXY_SOCK;"))
        #expect(mode(socket) & S_IFMT == S_IFSOCK && mode(socket) & 0o777 == 0o600, "mode \(String(mode(socket), radix: 8))")
        try await emulator.reset()

        // The same uid, without the capability in its environment.
        let result = try runProcess(URL(fileURLWithPath: "/usr/bin/env"), ["python3", client, "same-user", socket],
            environment: toolEnvironment(sandbox, variables, drop: ["TALLYFY_TOKEN"]))
        #expect(result.status == 0, "\(result.brief)")
        let seen = try json(result)
        let expected: [String: [String]] = [
            "noCapability": ["200", "application"], "capability": ["200", "application"],
            "wrongCapability": ["401", "UNAUTHENTICATED"], "tokenEndpoint": ["403", "VAULT_PROXY_FORBIDDEN"],
            "outsideAllow": ["403", "VAULT_PROXY_FORBIDDEN"], "anyHost": ["200", "application"], "last": ["200", "application"],
            "tcpNoCapability": ["401", "UNAUTHENTICATED"],
        ]
        for (name, answer) in expected {
            #expect(summary(seen[name]) == answer, "\(name): \(summary(seen[name]))")
        }
        let unixLine = "7 requests, 3 refused, 0 connections from another user refused"
        // Until the counts of all eight requests are written (once a second:
        // one write may fall between the Unix socket's and the TCP request).
        var status = proxyStatus(sandbox) { $0.contains("in all: 8 requests") }
        #expect(status.contains("on \(socket) (Unix socket, uid \(geteuid()) only, no capability needed): \(unixLine)"), "\(status)")
        #expect(status.contains("on \(variables["TALLYFY_API_URL"] ?? "?") (TCP, with the capability): 1 request, 1 refused"), "\(status)")
        #expect(status.contains("in all: 8 requests, 4 refused, 0 renewals"), "\(status)")

        // Another uid (nobody), running a copy of the client the system's
        // python3 can read. First as things are: the private folder keeps it out.
        let other = URL(fileURLWithPath: "/tmp/tv-proxy-other-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: other, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        defer { try? FileManager.default.removeItem(at: other) }
        let copy = other.appendingPathComponent("client.py").path
        FileManager.default.createFile(atPath: copy, contents: Data(ProxySocketClient.script.utf8), attributes: [.posixPermissions: 0o644])
        func asNobody() throws -> [String: Any] {
            let run = try runProcess(URL(fileURLWithPath: "/usr/bin/setpriv"),
                ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", copy, "other-user", socket],
                environment: ["PATH": "/usr/bin:/bin", "TALLYFY_API_URL": variables["TALLYFY_API_URL"] ?? "",
                    "TALLYFY_ORG_ID": variables["TALLYFY_ORG_ID"] ?? ""])
            return try json(run)
        }
        #expect(try asNobody()["connect"] as? String == "EACCES")

        // Then with the folders and the socket opened to everyone (a mistake
        // the proxy can't see): the kernel lets it connect, the proxy's
        // check of its uid closes the connection without reading a byte.
        let folders = [sandbox.root.path, sandbox.path("run"), sandbox.path("run/tallyfy-vault")]
        let modes = folders.map { mode($0) & 0o7777 }
        for folder in folders { chmod(folder, 0o711) }
        chmod(socket, 0o666)
        defer {
            for (folder, mode) in zip(folders, modes) { chmod(folder, mode) }
            chmod(socket, 0o600)
        }
        let refused = try asNobody()
        #expect(refused["connect"] as? String == "ok" && refused["uid"] as? Int == 65534, "\(refused)")
        #expect(refused["answered"] as? Int == 0 && refused["ending"] as? String != "timeout", "\(refused)")
        status = proxyStatus(sandbox) { $0.contains("1 connection from another user refused") }
        #expect(status.contains(": 7 requests, 3 refused, 1 connection from another user refused"), "\(status)")
        #expect(status.contains("in all: 8 requests, 4 refused, 0 renewals, 0 retried after a 401, 0 upstream failures, "
            + "1 connection from another user refused"), "\(status)")
        // Only the same uid's four good requests reached the emulator.
        let counts = try await emulator.counts()
        #expect(counts["me"] == 4 && counts["token"] == 0 && counts["users.list"] == 0, "\(counts)")
        let log = (try? String(contentsOfFile: sandbox.path("run/tallyfy-vault/proxy.log"), encoding: .utf8)) ?? ""
        #expect(log.contains("refused a connection to the proxy's Unix socket from uid 65534"), "\(log)")

        // `proxy stop`: the socket file goes, with the state file.
        let stopped = try sandbox.ok(["proxy", "stop"])
        #expect(stopped.stdout.contains("unset TALLYFY_VAULT_PROXY_SOCK;"))
        #expect(!FileManager.default.fileExists(atPath: socket))
        let left = (try? FileManager.default.contentsOfDirectory(atPath: sandbox.path("run/tallyfy-vault"))) ?? []
        #expect(left == ["proxy.log"], "left behind: \(left)")
    }

    @Test func theSocketGoesWhenTheProxyEndsAndAStaleOneIsReplaced() async throws {
        let (sandbox, emulator, _) = try await world()
        defer { emulator.stop() }
        let client = try sandbox.write(ProxySocketClient.script, to: "socket-client.py")
        let socket = sandbox.path("run/tallyfy-vault/proxy.sock")
        func start() throws -> (Int32, [String: String]) {
            let variables = proxyVariables(try sandbox.ok(["proxy", "--detach"]))
            #expect(variables["TALLYFY_VAULT_PROXY_SOCK"] == socket)
            return (Int32(variables["TALLYFY_VAULT_PROXY_PID"] ?? "") ?? 0, variables)
        }

        // Ended by a signal: it removes its socket on the way out.
        let (first, _) = try start()
        #expect(first > 0 && kill(first, SIGTERM) == 0)
        #expect(ProcView.waitUntil(seconds: 30) { !FileManager.default.fileExists(atPath: socket) }, "the socket outlived the proxy")
        try sandbox.refused(["proxy", "status"], status: 69)

        // Killed: the socket file stays, and the next proxy replaces it.
        let (second, _) = try start()
        #expect(second > 0 && kill(second, SIGKILL) == 0)
        #expect(ProcView.waitUntil(seconds: 30) { (try? sandbox.run(["proxy", "status"]))?.status == 69 })
        #expect(mode(socket) & S_IFMT == S_IFSOCK, "no stale socket to replace")
        let (_, variables) = try start()
        let result = try runProcess(URL(fileURLWithPath: "/usr/bin/env"), ["python3", client, "same-user", socket],
            environment: toolEnvironment(sandbox, variables, drop: ["TALLYFY_TOKEN"]))
        #expect(summary(try json(result)["noCapability"]) == ["200", "application"], "\(result.brief)")
        try sandbox.ok(["proxy", "stop"])
        #expect(!FileManager.default.fileExists(atPath: socket))
    }

    /// "It uses the agent when one runs": with no unlock source at all,
    /// `exec --proxy` starts and rides out renewals on the agent alone;
    /// without the agent the same run is refused (78).
    @Test func execProxyRunsOnTheAgentWithNoUnlockSource() async throws {
        let (sandbox, emulator, script) = try await world(appTokenTTL: 6)
        defer { emulator.stop() }
        let agent = try AgentTests().startAgent(sandbox, unlock: [:])  // on the sandbox's key file
        defer {
            agent.kill(SIGTERM)
            _ = agent.wait()
        }
        var noSource = sandbox.environment
        noSource["TALLYFY_VAULT_KEY_FILE"] = nil
        let result = try runProcess(BuildProducts.vault,
            ["exec", "--proxy", "--min-ttl", "1s", "--verbose", "--", "python3", script, "expiry", "60"], environment: noSource)
        #expect(result.status == 0, "\(result.brief)")
        let seen = try #require(try json(result)["seen"] as? [Any])
        #expect(seen.count == 3 && seen.allSatisfy { $0 is Int }, "every request answered, across two new tokens: \(seen)")
        #expect(result.stderr.contains("0 refused") && renewals(in: result.stderr) >= 2, "\(result.stderr)")
        let without = try runProcess(BuildProducts.vault, ["exec", "--proxy", "--no-agent", "--", "true"], environment: noSource)
        #expect(without.status == 78 && without.stderr.contains("unlocks the vault again at each renewal"), "\(without.brief)")
    }

    /// A standing proxy on the agent, no unlock source of its own, reached
    /// over its Unix socket, keeps serving across renewals.
    @Test func aStandingProxyOnTheAgentSurvivesRenewals() async throws {
        let (sandbox, emulator, _) = try await world(appTokenTTL: 6)
        defer { emulator.stop() }
        let client = try sandbox.write(ProxySocketClient.script, to: "socket-client.py")
        let agent = try AgentTests().startAgent(sandbox, unlock: [:])  // on the sandbox's key file
        defer {
            agent.kill(SIGTERM)
            _ = agent.wait()
        }
        var noSource = sandbox.environment
        noSource["TALLYFY_VAULT_KEY_FILE"] = nil
        let started = try runProcess(BuildProducts.vault, ["proxy", "--detach", "--min-ttl", "1s"], environment: noSource)
        #expect(started.status == 0, "\(started.brief)")
        let variables = proxyVariables(started)
        defer { _ = try? sandbox.run(["proxy", "stop"]) }
        let socket = try #require(variables["TALLYFY_VAULT_PROXY_SOCK"], "\(started.brief)")
        let result = try runProcess(URL(fileURLWithPath: "/usr/bin/env"), ["python3", client, "expiry", socket, "60"],
            environment: toolEnvironment(sandbox, variables, drop: ["TALLYFY_TOKEN", "TALLYFY_API_TOKEN"]))
        #expect(result.status == 0, "\(result.brief)")
        let seen = try #require(try json(result)["seen"] as? [Any])
        #expect(seen.count == 3 && seen.allSatisfy { $0 is Int }, "every request answered, across two new tokens: \(seen)")
        let status = proxyStatus(sandbox) { renewals(in: $0) >= 2 }
        #expect(status.contains(" 0 refused, 0 connections from another user refused"), "\(status)")
        #expect(renewals(in: status) >= 2, "\(status)")
        try sandbox.ok(["proxy", "stop"])
        #expect(!FileManager.default.fileExists(atPath: socket))
    }
}

import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The children the proxy tests run: one Python program (python3 is on
/// every machine the suite runs on), its mode chosen by its first argument.
/// It reports what it saw as JSON on standard output and never prints the
/// capability or a token.
enum ProxyChild {
    /// Python, shared with `ProxySocketClient`: asks (`ask()` gives the
    /// status and the parsed answer) until the proxy's token changed twice
    /// (the emulator says when a token expires) or a request is refused.
    static let untilTwoNewTokens = """
        def until_two_new_tokens(ask, seconds):
            seen = []
            deadline = time.time() + seconds
            while time.time() < deadline:
                status, parsed = ask()
                if status != 200:
                    seen.append(status)
                    break
                if not seen or seen[-1] != parsed.get("expires_at"):
                    seen.append(parsed.get("expires_at"))
                if len(seen) >= 3:
                    break
                time.sleep(0.05)
            return seen
        """

    static let script = #"""
        import http.client, json, os, socket, sys, threading, time, urllib.parse

        API = os.environ["TALLYFY_API_URL"]
        CAP = os.environ.get("TALLYFY_API_TOKEN", "")
        ORG = os.environ["TALLYFY_ORG_ID"]
        u = urllib.parse.urlsplit(API)
        HOST, PORT, BASE = u.hostname, u.port, u.path

        def connection():
            return http.client.HTTPConnection(HOST, PORT, timeout=60)

        def call(c, path, token=CAP, method="GET", body=None, headers=None, client=True):
            h = {"Accept": "application/json"}
            if client:
                h["X-Tallyfy-Client"] = "APIClient"
            if token is not None:
                h["Authorization"] = "Bearer " + token
            h.update(headers or {})
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            try:
                parsed = json.loads(data)
            except Exception:
                parsed = {}
            return r.status, parsed

        \#(ProxyChild.untilTwoNewTokens)

        def raw(data, timeout=60):
            s = socket.create_connection((HOST, PORT))
            s.settimeout(timeout)
            s.sendall(data)
            out = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
            except socket.timeout:
                pass
            s.close()
            return out

        def raw_status(data, timeout=60):
            out = raw(data, timeout)
            line = out.split(b"\r\n", 1)[0].split(b" ")
            body = out.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in out else b""
            try:
                parsed = json.loads(body)
            except Exception:
                parsed = {}
            return (int(line[1]) if len(line) > 1 else 0), parsed

        def summary(status, parsed):
            return [status, parsed.get("code"), parsed.get("error")]

        def listening_addresses():
            found = []
            for name in ("/proc/net/tcp", "/proc/net/tcp6"):
                try:
                    lines = open(name).read().splitlines()[1:]
                except OSError:
                    continue
                for line in lines:
                    fields = line.split()
                    address, port = fields[1].split(":")
                    if int(port, 16) == PORT and fields[3] == "0A":
                        found.append(address)
            return found

        mode = sys.argv[1]
        me = f"{BASE}/organizations/{ORG}/me"
        if mode == "environment":
            real = open(sys.argv[2]).read().strip()
            environ = open("/proc/self/environ", "rb").read().decode()
            print(json.dumps({
                "urls": sorted({os.environ[k] for k in ("TALLYFY_API_URL", "TALLYFY_BASE_URL", "TALLYFY_API_BASE_URL")}),
                "capability": CAP.startswith("tvproxy_") and len(CAP) == 72 and os.environ["TALLYFY_TOKEN"] == CAP,
                "realTokenInEnvironment": real in environ,
                "expiresAt": "TALLYFY_TOKEN_EXPIRES_AT" in os.environ,
                "listening": listening_addresses(),
                "me": call(connection(), me)[0],
            }))
        elif mode == "refusals":
            real = open(sys.argv[2]).read().strip()
            emulator_port = sys.argv[3]
            c = connection()
            out = {}
            out["first"] = summary(*call(c, me))
            out["noCapability"] = summary(*call(c, me, token=None))
            out["wrongCapability"] = summary(*call(c, me, token="tvproxy_" + "0" * 64))
            out["realToken"] = summary(*call(c, me, token=real))
            out["tokenEndpoint"] = summary(*call(c, "/oauth/token", method="POST", body="grant_type=client_credentials",
                headers={"Content-Type": "application/x-www-form-urlencoded"}))
            out["dotDot"] = summary(*call(c, f"{BASE}/../oauth/token", method="POST", body=""))
            out["encodedDotDot"] = summary(*call(c, f"{BASE}/%2e%2E/oauth/token", method="POST", body=""))
            out["admin"] = summary(*call(c, "/__emulator/reset", method="POST", body=""))
            out["adminViaDotDot"] = summary(*call(c, f"{BASE}/../__emulator/reset", method="POST", body=""))
            out["outsideAllow"] = summary(*call(c, f"{BASE}/organizations/{ORG}/users"))
            out["smugglingHeadersDropped"] = summary(*call(c, me, headers={"Proxy-Authorization": "Basic eA==",
                "X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example"}))
            out["noClientHeader"] = summary(*call(c, me, client=False))
            out["last"] = summary(*call(c, me))
            host = f"Host: {HOST}:{PORT}\r\n".encode()
            auth = f"Authorization: Bearer {CAP}\r\n".encode()
            out["absoluteForm"] = summary(*raw_status(
                f"POST http://127.0.0.1:{emulator_port}/__emulator/reset HTTP/1.1\r\n".encode() + host + auth
                + b"Content-Length: 0\r\nConnection: close\r\n\r\n"))
            out["twoAuthorizations"] = summary(*raw_status(
                f"GET {me} HTTP/1.1\r\n".encode() + host + auth + auth + b"Connection: close\r\n\r\n"))
            out["otherHost"] = summary(*raw_status(
                f"GET {me} HTTP/1.1\r\nHost: 127.0.0.1:{emulator_port}\r\n".encode() + auth + b"Connection: close\r\n\r\n"))
            print(json.dumps(out))
        elif mode == "io":
            sys.stdout.write("out:" + sys.stdin.read())
            sys.stderr.write("err\n")
            sys.exit(int(sys.argv[2]))
        elif mode == "signal":
            os.kill(os.getpid(), 15)
        elif mode == "keepalive":
            # The Done-when run: N requests on one kept-alive connection;
            # halfway it says so (a file) and waits for the go-ahead (a file).
            count, half, resume = int(sys.argv[2]), sys.argv[3], sys.argv[4]
            c = connection()
            failures, statuses, fresh = 0, {}, 0
            for i in range(count):
                if i == count // 2:
                    open(half, "w").close()
                    while not os.path.exists(resume):
                        time.sleep(0.01)
                status, parsed = call(c, me)
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200 or parsed.get("kind") != "application":
                    failures += 1
            print(json.dumps({"failures": failures, "statuses": {str(k): v for k, v in statuses.items()}}))
        elif mode == "concurrent":
            # Many requests at once after the token was revoked elsewhere.
            n, ready, resume = int(sys.argv[2]), sys.argv[3], sys.argv[4]
            first = call(connection(), me)[0]
            open(ready, "w").close()
            while not os.path.exists(resume):
                time.sleep(0.01)
            results = []
            def one():
                results.append(call(connection(), me)[0])
            threads = [threading.Thread(target=one) for _ in range(n)]
            for t in threads: t.start()
            for t in threads: t.join()
            print(json.dumps({"first": first, "statuses": sorted(results)}))
        elif mode == "expiry":
            c = connection()
            print(json.dumps({"seen": until_two_new_tokens(lambda: call(c, me), float(sys.argv[2]))}))
        elif mode == "badinput":
            out = {}
            big = b"X-Big: " + b"a" * 40000 + b"\r\n"
            out["oversized"] = summary(*raw_status(f"GET {me} HTTP/1.1\r\nHost: {HOST}:{PORT}\r\n".encode() + big + b"\r\n"))
            out["conflictingLength"] = summary(*raw_status(
                f"POST {me} HTTP/1.1\r\nHost: {HOST}:{PORT}\r\nAuthorization: Bearer {CAP}\r\n".encode()
                + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
            out["garbage"] = summary(*raw_status(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n"))
            # A slow client: half a head, then nothing; meanwhile others are served.
            slow = socket.create_connection((HOST, PORT))
            slow.sendall(f"GET {me} HTTP/1.1\r\nHost: {HOST}:".encode())
            out["servedMeanwhile"] = call(connection(), me)[0]
            slow.settimeout(60)
            answer = b""
            while True:
                chunk = slow.recv(65536)
                if not chunk:
                    break
                answer += chunk
            line = answer.split(b"\r\n", 1)[0].split(b" ")
            body = answer.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in answer else b"{}"
            out["slowloris"] = summary(int(line[1]) if len(line) > 1 else 0, json.loads(body or b"{}"))
            out["after"] = call(connection(), me)[0]
            print(json.dumps(out))
        elif mode == "upstream":
            # An upstream that hangs (504) or answers garbage (502).
            c = connection()
            out = {"first": summary(*call(c, me))}
            out["servedAfter"] = call(connection(), me)[0]
            print(json.dumps(out))
        elif mode == "tallyfy-cli":
            # What Tallyfy's CLI (tallyfy/cli, pkg/tallyfy/client.go) does for
            # `tallyfy whoami`: TALLYFY_BASE_URL with its trailing / trimmed,
            # + "/me"; TALLYFY_API_TOKEN trimmed, as Bearer; Accept and
            # X-Tallyfy-Client: APIClient; the error's "message" on failure.
            base = os.environ["TALLYFY_BASE_URL"].rstrip("/")
            token = os.environ["TALLYFY_API_TOKEN"].strip()
            target = urllib.parse.urlsplit(base + "/" + "me")
            c = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            c.request("GET", target.path, headers={"Accept": "application/json", "X-Tallyfy-Client": "APIClient",
                "Authorization": "Bearer " + token, "User-Agent": "tallyfy-cli/0.1.0 (linux/amd64)"})
            r = c.getresponse()
            body = json.loads(r.read() or b"{}")
            if 200 <= r.status < 300:
                d = body["data"]
                print(d["id"], d["email"], (d["first_name"] + " " + d["last_name"]).strip(), ORG)
            else:
                print(f"Error: {r.status}: {body.get('message', '')}", file=sys.stderr)
                sys.exit(1)
        """#
}

/// `exec --proxy` end to end: the real binary, the real emulator, a real
/// child. Every refusal is checked twice: the child's answer, and the
/// emulator's counts showing the request never arrived.
@Suite(.serialized) struct ProxyTests {
    let oldSecret = "cs-\(UUID().uuidString)"
    let newSecret = "cs-\(UUID().uuidString)"

    /// A sandbox logged in to a fresh emulator that accepts the old and the
    /// new secret, with a private `XDG_RUNTIME_DIR`, and the child script.
    func world(_ extra: [String] = [], appTokenTTL: Int? = nil) async throws -> (Sandbox, Emulator, String) {
        let emulator = try await Emulator.start(
            clients: [("client-test", oldSecret), ("client-test", newSecret)], appTokenTTL: appTokenTTL, extraArguments: extra)
        let sandbox = try Sandbox()
        let runtime = sandbox.path("run")
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        sandbox.environment["XDG_RUNTIME_DIR"] = runtime
        try sandbox.initWithKeyFile()
        try sandbox.storeCredentials(for: emulator, secret: oldSecret)
        try sandbox.ok(["login"])
        let script = try sandbox.write(ProxyChild.script, to: "child.py")
        return (sandbox, emulator, script)
    }

    func json(_ result: RunResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result.brief)")
    }

    func summary(_ value: Any?) -> [String] {
        ((value as? [Any]) ?? []).map { "\($0)" }
    }

    /// The sealed token, in a private file for the child (never in argv or its environment).
    private func realTokenFile(_ sandbox: Sandbox) throws -> String {
        let token = try sandbox.ok(["token"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        return try sandbox.write(token, to: "real-token")
    }

    private func waitFor(_ path: String, or process: Process) -> Bool {
        while !FileManager.default.fileExists(atPath: path) {
            if !process.isRunning { return false }
            usleep(5_000)
        }
        return true
    }

    @Test func theChildGetsAnAddressAndACapabilityNeverTheToken() async throws {
        let (sandbox, emulator, script) = try await world()
        defer { emulator.stop() }
        let real = try realTokenFile(sandbox)
        let result = try sandbox.run(["exec", "--proxy", "--", "python3", script, "environment", real])
        #expect(result.status == 0, "\(result.brief)")
        let seen = try json(result)
        let urls = try #require(seen["urls"] as? [String])
        #expect(urls.count == 1 && urls[0].hasPrefix("http://127.0.0.1:") && urls[0].hasSuffix("/api") && urls[0] != emulator.apiURL)
        #expect(seen["capability"] as? Bool == true)
        #expect(seen["realTokenInEnvironment"] as? Bool == false)
        #expect(seen["expiresAt"] as? Bool == false)
        #expect(seen["listening"] as? [String] == ["0100007F"], "listens on 127.0.0.1 only")
        #expect(seen["me"] as? Int == 200)
        // The port was closed when the child ended.
        let port = try #require(URLComponents(string: urls[0])?.port)
        #expect(try !isListening(port))
        // Nothing left in the runtime folder.
        let left = (try? FileManager.default.subpathsOfDirectory(atPath: sandbox.path("run"))) ?? []
        #expect(left.isEmpty, "left behind: \(left)")
    }

    func isListening(_ port: Int) throws -> Bool {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return connected == 0
    }

    @Test func refusalsAreAnsweredByTheProxyAndNeverReachTallyfy() async throws {
        let (sandbox, emulator, script) = try await world()
        defer { emulator.stop() }
        let real = try realTokenFile(sandbox)
        try await emulator.reset()
        let port = try #require(URLComponents(string: emulator.baseURL)?.port)
        let result = try sandbox.run([
            "exec", "--proxy", "--allow", "GET:/organizations/*/me", "--verbose", "--", "python3", script, "refusals", real, String(port),
        ])
        #expect(result.status == 0, "\(result.brief)")
        let seen = try json(result)
        for name in ["first", "smugglingHeadersDropped", "noClientHeader", "last"] {
            #expect(summary(seen[name]).first == "200", "\(name): \(summary(seen[name]))")
        }
        let expected: [String: (String, String)] = [
            "noCapability": ("401", "UNAUTHENTICATED"), "wrongCapability": ("401", "UNAUTHENTICATED"),
            "realToken": ("401", "UNAUTHENTICATED"), "tokenEndpoint": ("403", "VAULT_PROXY_FORBIDDEN"),
            "dotDot": ("403", "VAULT_PROXY_FORBIDDEN"), "encodedDotDot": ("403", "VAULT_PROXY_FORBIDDEN"),
            "admin": ("403", "VAULT_PROXY_FORBIDDEN"), "adminViaDotDot": ("403", "VAULT_PROXY_FORBIDDEN"),
            "outsideAllow": ("403", "VAULT_PROXY_FORBIDDEN"), "absoluteForm": ("400", "VAULT_PROXY_BAD_REQUEST"),
            "twoAuthorizations": ("400", "VAULT_PROXY_BAD_REQUEST"), "otherHost": ("400", "VAULT_PROXY_BAD_REQUEST"),
        ]
        for (name, (status, code)) in expected {
            #expect(summary(seen[name]) == [status, code, "1"], "\(name)")
        }
        // Four requests reached the emulator, all `me`, all with the client
        // header (the proxy added the missing one); nothing else arrived: no
        // token request, no user list, no reset of its counts.
        let counts = try await emulator.counts()
        #expect(counts["me"] == 4 && counts["token"] == 0 && counts["users.list"] == 0, "\(counts)")
        #expect(try await emulator.requests() == .init(clientHeaders: ["APIClient": 4], withoutClientHeader: 0))
        #expect(result.stderr.contains("proxy: 16 requests, 12 refused, 0 renewals"), "\(result.stderr)")
    }

    @Test func theCommandsStatusOutputAndSignalsAreItsOwn() async throws {
        let (sandbox, emulator, script) = try await world()
        defer { emulator.stop() }
        let result = try sandbox.run(["exec", "--proxy", "--", "python3", script, "io", "7"], stdin: "hello\n")
        #expect(result.status == 7)
        #expect(result.stdout == "out:hello\n")
        #expect(result.stderr == "err\n")
        let killed = try sandbox.run(["exec", "--proxy", "--", "python3", script, "signal"])
        #expect(killed.status == 128 + SIGTERM, "\(killed.brief)")
        let missing = try sandbox.run(["exec", "--proxy", "--", "/nonexistent/command"])
        #expect(missing.status == 127, "\(missing.brief)")
    }

    @Test func misuseIsAUsageError() async throws {
        let (sandbox, emulator, _) = try await world()
        defer { emulator.stop() }
        for (arguments, message) in [
            (["exec", "--allow", "GET:/me", "--", "true"], "apply only with --proxy"),
            (["exec", "--proxy", "--keep-fresh", "--", "true"], "--proxy and --keep-fresh"),
            (["exec", "--proxy", "--allow", "GET/me", "--", "true"], "has no METHOD:"),
            (["exec", "--proxy", "--no-refresh", "--", "true"], "--no-refresh"),
        ] {
            let result = try sandbox.refused(arguments, status: 64)
            #expect(result.stderr.contains(message), "\(arguments): \(result.stderr)")
        }
        var noSource = sandbox.environment
        noSource["TALLYFY_VAULT_KEY_FILE"] = nil
        let prompt = try runProcess(BuildProducts.vault, ["exec", "--proxy", "--", "true"], environment: noSource)
        #expect(prompt.status == 78, "\(prompt.brief)")
        #expect(prompt.stderr.contains("exec --proxy unlocks the vault again at each renewal"))
    }

    /// Done when: 2,000 kept-alive requests, none failing, while halfway the
    /// secret is rotated and a login elsewhere reissues the token on an
    /// emulator that revokes older tokens when it issues a new one.
    @Test func twoThousandRequestsRideOutARotationAndALoginElsewhere() async throws {
        let (sandbox, emulator, script) = try await world(["--revoke-on-reissue"])
        defer { emulator.stop() }
        let elsewhere = try Sandbox()
        try elsewhere.initWithKeyFile()
        try elsewhere.storeCredentials(for: emulator, secret: newSecret)
        let half = sandbox.path("half"), resume = sandbox.path("resume")
        let process = Process()
        process.executableURL = BuildProducts.vault
        process.arguments = ["exec", "--proxy", "--verbose", "--", "python3", script, "keepalive", "2000", half, resume]
        process.environment = sandbox.environment
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        detachedFromTerminal
        try process.run()
        #expect(waitFor(half, or: process), "the child never got halfway")
        let tokensBefore = try await emulator.counts()["token"] ?? 0
        try sandbox.ok(["rotate-secret", "--secret-stdin"], stdin: newSecret + "\n")
        try elsewhere.ok(["login"])
        _ = FileManager.default.createFile(atPath: resume, contents: nil)
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(reapedStatus(process) == 0, "\(stderr)")
        let seen = try #require(try JSONSerialization.jsonObject(with: stdout) as? [String: Any], "\(stderr)")
        #expect(seen["failures"] as? Int == 0, "\(seen)")
        #expect((seen["statuses"] as? [String: Int]) == ["200": 2000])
        // One renewal by the proxy after the rotation's and the other login's.
        let tokens = try await emulator.counts()["token"] ?? 0
        #expect(tokens - tokensBefore == 3, "token requests: \(tokens - tokensBefore)")
        #expect(stderr.contains("proxy: 2000 requests, 0 refused, 2 renewals"), "\(stderr)")
    }

    @Test func concurrentRequestsRejectedWithARevokedTokenMakeOneRenewal() async throws {
        let (sandbox, emulator, script) = try await world(["--revoke-on-reissue"])
        defer { emulator.stop() }
        let elsewhere = try Sandbox()
        try elsewhere.initWithKeyFile()
        try elsewhere.storeCredentials(for: emulator, secret: newSecret)
        let ready = sandbox.path("ready"), resume = sandbox.path("resume")
        let process = Process()
        process.executableURL = BuildProducts.vault
        process.arguments = ["exec", "--proxy", "--verbose", "--", "python3", script, "concurrent", "40", ready, resume]
        process.environment = sandbox.environment
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        detachedFromTerminal
        try process.run()
        #expect(waitFor(ready, or: process))
        try elsewhere.ok(["login"])  // revokes the proxy's token
        let tokensBefore = try await emulator.counts()["token"] ?? 0
        _ = FileManager.default.createFile(atPath: resume, contents: nil)
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        _ = reapedStatus(process)
        let seen = try #require(try JSONSerialization.jsonObject(with: stdout) as? [String: Any], "\(stderr)")
        #expect(seen["first"] as? Int == 200)
        #expect((seen["statuses"] as? [Int]) == Array(repeating: 200, count: 40), "\(seen)")
        #expect(try await emulator.counts()["token"] ?? 0 == tokensBefore + 1, "single flight: one token request")
        #expect(stderr.contains("1 renewal,"), "\(stderr)")
    }

    @Test func theTokenIsRenewedInTheBackgroundBeforeItExpires() async throws {
        let (sandbox, emulator, script) = try await world(appTokenTTL: 6)
        defer { emulator.stop() }
        let result = try sandbox.run(["exec", "--proxy", "--min-ttl", "1s", "--verbose", "--", "python3", script, "expiry", "60"])
        #expect(result.status == 0, "\(result.brief)")
        let seen = try #require(try json(result)["seen"] as? [Any])
        #expect(seen.count == 3 && seen.allSatisfy { $0 is Int }, "\(seen)")
        #expect(result.stderr.contains("0 retried after a 401"), "\(result.stderr)")
    }

    @Test func malformedSlowAndOversizedRequestsAreRefusedWithoutStoppingTheProxy() async throws {
        let (sandbox, emulator, script) = try await world()
        defer { emulator.stop() }
        try await emulator.reset()
        let result = try sandbox.run(["exec", "--proxy", "--", "python3", script, "badinput"], env: ["TALLYFY_VAULT_HTTP_TIMEOUT": "2"])
        #expect(result.status == 0, "\(result.brief)")
        let seen = try json(result)
        #expect(summary(seen["oversized"]) == ["431", "VAULT_PROXY_HEADERS_TOO_LARGE", "1"])
        #expect(summary(seen["conflictingLength"]) == ["400", "VAULT_PROXY_BAD_REQUEST", "1"])
        #expect(summary(seen["garbage"]) == ["400", "VAULT_PROXY_BAD_REQUEST", "1"])
        #expect(summary(seen["slowloris"]) == ["408", "VAULT_PROXY_REQUEST_TIMEOUT", "1"])
        #expect(seen["servedMeanwhile"] as? Int == 200)
        #expect(seen["after"] as? Int == 200)
        #expect(try await emulator.counts()["me"] == 2, "only the two good requests arrived")
    }

    @Test func anUpstreamThatHangsGets504() async throws {
        let (sandbox, emulator, script) = try await world()
        defer { emulator.stop() }
        try await emulator.inject(.init(endpoint: "me", kind: "delay", delayMs: 8000, times: 1))
        let result = try sandbox.run(["exec", "--proxy", "--", "python3", script, "upstream"], env: ["TALLYFY_VAULT_HTTP_TIMEOUT": "1"])
        #expect(result.status == 0, "\(result.brief)")
        let seen = try json(result)
        #expect(summary(seen["first"]) == ["504", "VAULT_PROXY_GATEWAY_TIMEOUT", "1"])
        #expect(seen["servedAfter"] as? Int == 200)
    }

    @Test func anUpstreamThatAnswersGarbageGets502() async throws {
        let (sandbox, emulator, script) = try await world()
        defer { emulator.stop() }
        // A server that answers every connection with bytes that are not HTTP.
        let garbage = try sandbox.write(#"""
            import socket, sys, threading
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
            print(s.getsockname()[1], flush=True)
            def serve(c):
                try:
                    c.recv(65536); c.sendall(b"\x00\x01 this is not HTTP\r\n\r\n"); c.close()
                except OSError:
                    pass
            while True:
                c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
            """#, to: "garbage.py")
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["python3", garbage]
        let portPipe = Pipe()
        server.standardOutput = portPipe
        // Not the runner's: a server left behind holding the runner's
        // standard error kept `swift test` waiting for ever after the run.
        server.standardError = FileHandle.nullDevice
        server.standardInput = FileHandle.nullDevice
        try server.run()
        // SIGKILL: a child of the runner's threads starts with SIGTERM
        // blocked (Foundation passes the thread's mask on), so terminate()
        // left it running.
        defer {
            kill(server.processIdentifier, SIGKILL)
            _ = reapedStatus(server)
            try? portPipe.fileHandleForReading.close()
        }
        var line = Data()
        while !line.contains(0x0A) {
            let chunk = portPipe.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let port = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        try sandbox.ok(["credentials", "set", "--org", "org-test", "--client-id", "client-test", "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", "http://127.0.0.1:\(port)/api"], stdin: oldSecret)
        let result = try sandbox.run(["exec", "--proxy", "--", "python3", script, "upstream"])
        #expect(result.status == 0, "\(result.brief)")
        let seen = try json(result)
        #expect(summary(seen["first"]) == ["502", "VAULT_PROXY_BAD_GATEWAY", "1"])
        #expect(seen["servedAfter"] as? Int == 502)
    }

    /// Tallyfy's CLI reads TALLYFY_BASE_URL and TALLYFY_API_TOKEN (tallyfy/cli,
    /// internal/config/loader.go, internal/auth/resolver.go); Go is not
    /// installed here, so the child does what its `whoami` does.
    @Test func tallyfysCLIWorksThroughTheProxyWithAUserToken() async throws {
        let (sandbox, emulator, script) = try await world()
        defer { emulator.stop() }
        try sandbox.ok(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"])
        let result = try sandbox.run(["exec", "--proxy", "--user", "ann@example.com", "--", "python3", script, "tallyfy-cli"])
        #expect(result.status == 0, "\(result.brief)")
        let fields = result.stdout.split(separator: " ").map(String.init)
        #expect(fields.count == 5 && fields[1] == "ann@example.com" && fields[2] == "Ann" && fields[3] == "Lee", "\(result.stdout)")
        // With the application token `GET /me` is Tallyfy's 401, passed through as it came.
        let application = try sandbox.run(["exec", "--proxy", "--", "python3", script, "tallyfy-cli"])
        #expect(application.status == 1)
        #expect(application.stderr.hasPrefix("Error: 401: ") && application.stderr.contains("user token"), "\(application.stderr)")
    }

    @Test func aStandingProxyServesOtherToolsUntilStopped() async throws {
        let (sandbox, emulator, script) = try await world()
        defer { emulator.stop() }
        let started = try sandbox.ok(["proxy", "--detach", "--allow", "GET:/organizations/*/me"])
        var variables: [String: String] = [:]
        for line in started.stdout.split(separator: "\n") {
            let assignment = line.split(separator: ";")[0].split(separator: "=", maxSplits: 1).map(String.init)
            if assignment.count == 2 { variables[assignment[0]] = assignment[1] }
        }
        #expect(Set(variables.keys) == ["TALLYFY_API_URL", "TALLYFY_BASE_URL", "TALLYFY_API_BASE_URL", "TALLYFY_TOKEN",
            "TALLYFY_API_TOKEN", "TALLYFY_ORG_ID", "TALLYFY_VAULT_PROXY_SOCK", "TALLYFY_VAULT_PROXY_PID"], "\(started.brief)")
        #expect(started.stdout.contains("export TALLYFY_API_TOKEN;"))
        let again = try sandbox.refused(["proxy", "--detach"], status: 64)
        #expect(again.stderr.contains("a proxy is already running"))

        // A tool that is not the vault's child, with only those variables.
        var environment = ["PATH": sandbox.environment["PATH"] ?? "/usr/bin:/bin", "HOME": sandbox.root.path]
        environment.merge(variables) { $1 }
        let tool = try runProcess(URL(fileURLWithPath: "/usr/bin/env"), ["python3", script, "upstream"], environment: environment)
        let seen = try json(tool)
        #expect(summary(seen["first"]).first == "200" && seen["servedAfter"] as? Int == 200, "\(tool.brief)")

        // Its counts reach `proxy status` within a second or so.
        var status = try sandbox.ok(["proxy", "status"])
        let deadline = Date().addingTimeInterval(30)
        while !status.stdout.contains("2 requests, 0 refused"), Date() < deadline {
            usleep(100_000)
            status = try sandbox.ok(["proxy", "status"])
        }
        #expect(status.stdout.contains("2 requests, 0 refused"), "\(status.stdout)")
        #expect(status.stdout.contains("on \(variables["TALLYFY_API_URL"] ?? "?")"))
        #expect(!status.stdout.contains(variables["TALLYFY_API_TOKEN"] ?? "?"))

        let stopped = try sandbox.ok(["proxy", "stop"])
        #expect(stopped.stdout.contains("unset TALLYFY_API_URL;") && stopped.stdout.contains("unset TALLYFY_VAULT_PROXY_PID;")
            && stopped.stdout.contains("unset TALLYFY_VAULT_PROXY_SOCK;"))
        let port = try #require(URLComponents(string: variables["TALLYFY_API_URL"] ?? "")?.port)
        #expect(try !isListening(port))
        #expect(!FileManager.default.fileExists(atPath: sandbox.path("run/tallyfy-vault/proxy.json")))
        try sandbox.refused(["proxy", "status"], status: 69)
    }
}

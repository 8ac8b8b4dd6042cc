import Foundation
import Testing

/// Issue 24 F8: a hostile or broken etcd gateway (a fake one, in Python, on a
/// loopback port) can't make a client hold gigabytes, fetch chunks for ever,
/// or wait for minutes: every answer has a size cap, a manifest a chunk cap,
/// a whole read a deadline.
@Suite struct EtcdGatewayLimitsTests {
    /// Answers etcd's JSON gateway as `mode` says: `big` pads the manifest's
    /// answer to 8 MiB; `many` names 100,000 chunks; `slow` takes 2.5 s per
    /// answer (within each request's 3 s) for a 20-chunk vault. Every request
    /// is counted in `count`.
    static let script = #"""
        import base64, http.server, json, sys, threading, time
        mode, count_file = sys.argv[1], sys.argv[2]
        lock = threading.Lock(); seen = [0]
        def b64(data): return base64.b64encode(data).decode()
        class Gateway(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *args): pass
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                with lock:
                    seen[0] += 1
                    open(count_file, "w").write(str(seen[0]))
                if mode == "slow": time.sleep(2.5)
                key = base64.b64decode(body.get("key", "")).decode(errors="replace")
                if key.endswith("/manifest"):
                    chunks, size = {"big": (1, 10), "many": (100000, 100000), "slow": (20, 19 * 786432 + 1)}[mode]
                    manifest = {"format": "tallyfy-vault-etcd-1", "generation": "g", "chunks": chunks, "size": size}
                    answer = {"header": {"revision": "5"}, "kvs": [{"key": b64(key.encode()), "value": b64(json.dumps(manifest).encode()), "mod_revision": "5"}]}
                    if mode == "big": answer["pad"] = "x" * (8 << 20)
                else:
                    answer = {"header": {"revision": "5"}, "kvs": [{"key": b64(key.encode()), "value": b64(b"\0" * 4), "mod_revision": "5"}]}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
        print(server.server_address[1], flush=True)
        server.serve_forever()
        """#

    final class FakeGateway {
        let process = Process()
        let port: Int
        let countFile: String

        init(mode: String, in sandbox: Sandbox) throws {
            countFile = sandbox.path("gateway-count-\(mode)")
            process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            process.arguments = ["-c", EtcdGatewayLimitsTests.script, mode, countFile]
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice
            detachedFromTerminal
            try process.run()
            var line = Data()
            while !line.contains(0x0A) {
                let more = out.fileHandleForReading.availableData
                if more.isEmpty { break }
                line.append(more)
            }
            guard let port = Int(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw EtcdClusterError(message: "the fake gateway did not start")
            }
            self.port = port
        }

        var requests: Int { Int((try? String(contentsOfFile: countFile, encoding: .utf8)) ?? "") ?? 0 }
        var location: String { "etcd://127.0.0.1:\(port)/fake" }

        deinit {
            // SIGKILL: the runner may have left SIGTERM ignored, and a child inherits that.
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Runs `status` on the fake's vault; the result, or nil when it still ran after `seconds`.
    private func status(_ sandbox: Sandbox, _ gateway: FakeGateway, within seconds: Double) throws -> RunResult? {
        let command = try sandbox.launch(["--vault", gateway.location, "status"])
        guard ProcView.waitUntil(seconds: seconds, { !command.isRunning }) else {
            command.kill()
            _ = command.wait()
            return nil
        }
        return command.wait()
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3")))
    func anAnswerOverTheCapIsRefused() throws {
        let sandbox = try Sandbox()
        let gateway = try FakeGateway(mode: "big", in: sandbox)
        let result = try #require(try status(sandbox, gateway, within: 30), "status still ran")
        #expect(result.status == 69, "\(result.brief)")
        #expect(result.stderr.contains("an answer over 2 MiB"), "\(result.stderr)")
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3")))
    func aManifestWithTooManyChunksIsNotFollowed() throws {
        let sandbox = try Sandbox()
        let gateway = try FakeGateway(mode: "many", in: sandbox)
        let result = try #require(try status(sandbox, gateway, within: 30), "status still ran after \(gateway.requests) requests")
        #expect(result.status == 65, "\(result.brief)")
        #expect(gateway.requests <= 3, "\(gateway.requests) requests for a manifest that should have been refused")
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3")))
    func aSlowGatewayMeetsTheWholeReadDeadline() throws {
        let sandbox = try Sandbox()
        let gateway = try FakeGateway(mode: "slow", in: sandbox)
        let result = try #require(try status(sandbox, gateway, within: 30), "status still ran after \(gateway.requests) requests")
        #expect(result.status == 69, "\(result.brief)")
        #expect(result.stderr.contains("too slow"), "\(result.stderr)")
    }
}

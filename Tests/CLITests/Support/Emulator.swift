import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Testing

/// The real `tallyfy-emulator` binary, started on a free loopback port for one test.
///
/// Client secrets go to the emulator through a 0600 temporary file
/// (`--clients-file`), never through argv, so the tests follow the same rule
/// the vault does: secrets do not show in `ps`.
///
/// Stop it with `stop()`; `deinit` stops it too, so a failing test cannot
/// leak a server process.
final class Emulator: @unchecked Sendable {
    /// e.g. `http://127.0.0.1:4711`
    let baseURL: String
    var tokenURL: String { baseURL + "/oauth/token" }
    var apiURL: String { baseURL + "/api" }

    private let process: Process
    private let stdoutPipe: Pipe
    private let workDirectory: URL
    private let lock = NSLock()
    private var exitStatus: Int32?

    /// The stderr log of the emulator, for failure messages.
    var log: String {
        (try? String(contentsOf: workDirectory.appendingPathComponent("stderr.log"), encoding: .utf8)) ?? ""
    }

    private init(baseURL: String, process: Process, stdoutPipe: Pipe, workDirectory: URL) {
        self.baseURL = baseURL
        self.process = process
        self.stdoutPipe = stdoutPipe
        self.workDirectory = workDirectory
    }

    deinit {
        stop()
    }

    struct StartError: Error, CustomStringConvertible {
        var description: String
    }

    /// Launches the emulator and waits (at most `timeout` seconds) for its
    /// `listening on` line.
    static func start(
        orgs: [String] = ["org-test"],
        clients: [(id: String, secret: String)],
        appTokenTTL: Int? = nil,
        userTokenTTL: Int? = nil,
        extraArguments: [String] = [],
        timeout: Double = 20
    ) async throws -> Emulator {
        let workDirectory = FileManager.default.temporaryDirectory
            .appendingPathComponent("tallyfy-emulator-\(UUID().uuidString)")
        try FileManager.default.createDirectory(
            at: workDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])

        let clientsFile = workDirectory.appendingPathComponent("clients")
        let lines = clients.map { "\($0.id):\($0.secret)\n" }.joined()
        guard FileManager.default.createFile(
            atPath: clientsFile.path, contents: Data(lines.utf8), attributes: [.posixPermissions: 0o600])
        else { throw StartError(description: "cannot write \(clientsFile.path)") }

        var arguments = ["--host", "127.0.0.1", "--port", "0", "--clients-file", clientsFile.path]
        for org in orgs { arguments += ["--org", org] }
        if let appTokenTTL { arguments += ["--app-token-ttl", String(appTokenTTL)] }
        if let userTokenTTL { arguments += ["--user-token-ttl", String(userTokenTTL)] }
        arguments += extraArguments

        let process = Process()
        process.executableURL = BuildProducts.emulator
        process.arguments = arguments
        let stdoutPipe = Pipe()
        process.standardOutput = stdoutPipe
        let stderrPath = workDirectory.appendingPathComponent("stderr.log")
        _ = FileManager.default.createFile(atPath: stderrPath.path, contents: nil)
        let stderrHandle = try FileHandle(forWritingTo: stderrPath)
        process.standardError = stderrHandle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? stderrHandle.close()  // the child has its own copy

        do {
            let line = try await readListeningLine(from: stdoutPipe.fileHandleForReading, timeout: timeout)
            let baseURL = String(line.dropFirst("listening on ".count))
            return Emulator(baseURL: baseURL, process: process, stdoutPipe: stdoutPipe, workDirectory: workDirectory)
        } catch {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            let log = (try? String(contentsOf: stderrPath, encoding: .utf8)) ?? ""
            try? FileManager.default.removeItem(at: workDirectory)
            throw StartError(description: "\(error) (exit status \(process.terminationStatus); stderr: \(log))")
        }
    }

    /// Reads stdout on a background thread (FileHandle reads block) until the
    /// `listening on` line, EOF (the emulator died) or the timeout.
    private static func readListeningLine(from handle: FileHandle, timeout: Double) async throws -> String {
        let once = ResumeOnce<String>()
        return try await withCheckedThrowingContinuation { continuation in
            once.set(continuation)
            Thread.detachNewThread {
                var buffer = Data()
                while true {
                    let chunk = handle.availableData
                    if chunk.isEmpty {
                        once.resume(with: .failure(StartError(
                            description: "tallyfy-emulator exited before printing `listening on`")))
                        return
                    }
                    buffer.append(chunk)
                    if let newline = buffer.firstIndex(of: 0x0A) {
                        let line = String(decoding: buffer[..<newline], as: UTF8.self)
                        if line.hasPrefix("listening on http://") {
                            once.resume(with: .success(line))
                        } else {
                            once.resume(with: .failure(StartError(
                                description: "unexpected first line from tallyfy-emulator: \(line)")))
                        }
                        return
                    }
                }
            }
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout) {
                once.resume(with: .failure(StartError(
                    description: "tallyfy-emulator printed no `listening on` line within \(Int(timeout)) s")))
            }
        }
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after 10 s). Returns the
    /// exit status; calling it again returns the same status.
    @discardableResult
    func stop() -> Int32 {
        lock.lock()
        defer { lock.unlock() }
        if let exitStatus { return exitStatus }
        if process.isRunning {
            process.terminate()
            let deadline = Date().addingTimeInterval(10)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        // Not `waitUntilExit`: under load Foundation can miss the child's
        // SIGCHLD and wait for ever on a zombie (seen: two test threads, the
        // whole cooperative pool, stuck here). After a while the zombie is
        // reaped here instead.
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        let status: Int32
        if process.isRunning {
            var raw: Int32 = 0
            let reaped = waitpid(process.processIdentifier, &raw, 0) == process.processIdentifier
            let signal = raw & 0x7f
            status = !reaped ? 137 : signal == 0 ? (raw >> 8) & 0xff : 128 + signal
        } else {
            // A signal death is reported as 128 + signal, like a shell would.
            status = process.terminationReason == .uncaughtSignal
                ? 128 + process.terminationStatus : process.terminationStatus
        }
        exitStatus = status
        try? stdoutPipe.fileHandleForReading.close()  // see runProcess: never left to Foundation
        try? FileManager.default.removeItem(at: workDirectory)
        return status
    }

    /// Whether the process is still running.
    var isRunning: Bool { process.isRunning }

    // MARK: Admin surface

    /// A fault for `POST /__emulator/faults`; nil fields are left out.
    struct Fault: Codable, Sendable {
        /// `token`, `users.create`, `users.token`, `users.list`, `me` or `*`.
        var endpoint: String = "*"
        /// `status`, `rate-limit`, `delay`, `broken-json` or `html`.
        var kind: String
        var status: Int? = nil
        var retryAfter: Int? = nil
        var delayMs: Int? = nil
        /// How many of the next requests it applies to; nil = until cleared.
        var times: Int? = nil
    }

    /// Requests per endpoint: `token`, `users.create`, `users.token`, `users.list`, `me`.
    func counts() async throws -> [String: Int] {
        let reply = try await send(.GET, "/__emulator/counts")
        try reply.expect(200)
        return try JSONDecoder().decode([String: Int].self, from: reply.body)
    }

    /// `GET /__emulator/requests`: the `X-Tallyfy-Client` values `/api/` requests carried.
    struct Requests: Decodable, Equatable {
        /// Each value seen, with how many requests carried it.
        var clientHeaders: [String: Int]
        /// Requests without the header (or with a blank one).
        var withoutClientHeader: Int
    }

    func requests() async throws -> Requests {
        let reply = try await send(.GET, "/__emulator/requests")
        try reply.expect(200)
        return try JSONDecoder().decode(Requests.self, from: reply.body)
    }

    /// The `X-Tallyfy-Client` values `/api/` requests carried, with their counts.
    func clientHeaders() async throws -> [String: Int] {
        try await requests().clientHeaders
    }

    func inject(_ fault: Fault) async throws {
        let reply = try await send(.POST, "/__emulator/faults", json: try JSONEncoder().encode(fault))
        try reply.expect(200)
    }

    /// Queues a fault written as a dictionary, e.g. `["endpoint": "token", "kind": "status", "status": 503, "times": 1]`.
    func inject(_ fault: [String: Any]) async throws {
        let reply = try await send(.POST, "/__emulator/faults",
                                   json: try JSONSerialization.data(withJSONObject: fault))
        try reply.expect(200)
    }

    func clearFaults() async throws {
        try await send(.DELETE, "/__emulator/faults").expect(200)
    }

    /// Zeroes the counts and clears the faults.
    func reset() async throws {
        try await send(.POST, "/__emulator/reset").expect(200)
    }

    /// Changes the lifetimes of tokens issued from now on.
    func setLifetimes(app: Int? = nil, user: Int? = nil) async throws {
        var body: [String: Int] = [:]
        body["app"] = app
        body["user"] = user
        try await send(.PUT, "/__emulator/ttl", json: try JSONSerialization.data(withJSONObject: body)).expect(200)
    }

    /// Moves the emulator's clock forward by `seconds`.
    func advanceClock(by seconds: Int) async throws {
        try await send(.POST, "/__emulator/clock", json: try JSONSerialization.data(withJSONObject: ["advance": seconds])).expect(200)
    }

    /// Replaces the secrets `client` is accepted with (e.g. to retire the old one after a rotation).
    func setSecrets(client: String, secrets: [String]) async throws {
        let id = client.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(["/"])) ?? client
        try await send(.PUT, "/__emulator/clients/\(id)",
                       json: try JSONSerialization.data(withJSONObject: ["secrets": secrets])).expect(200)
    }

    // MARK: Plain HTTP

    /// One HTTP answer, fully read.
    struct Reply: Sendable {
        var status: Int
        var headers: [(name: String, value: String)]
        var body: Data

        var text: String { String(decoding: body, as: UTF8.self) }

        /// The body as a JSON object (empty when it is not one).
        var json: [String: Any] {
            (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:]
        }

        func header(_ name: String) -> String? {
            headers.first { $0.name.lowercased() == name.lowercased() }?.value
        }

        /// Throws (with the body, for the failure message) unless the status is `status`.
        func expect(_ status: Int) throws {
            guard self.status == status else {
                throw StartError(description: "expected HTTP \(status), got \(self.status): \(text)")
            }
        }
    }

    /// Sends a request to `baseURL + path` (an absolute URL is used as is).
    @discardableResult
    func send(
        _ method: HTTPMethod,
        _ path: String,
        headers: [String: String] = [:],
        body: Data? = nil,
        json: Data? = nil,
        form: [String: String]? = nil
    ) async throws -> Reply {
        var request = HTTPClientRequest(url: path.hasPrefix("http") ? path : baseURL + path)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let json {
            request.headers.replaceOrAdd(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: json))
        } else if let form {
            request.headers.replaceOrAdd(name: "Content-Type", value: "application/x-www-form-urlencoded")
            request.body = .bytes(ByteBuffer(string: Self.formEncode(form)))
        } else if let body {
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let buffer = try await response.body.collect(upTo: 1 << 20)
        return Reply(status: Int(response.status.code),
                     headers: response.headers.map { ($0.name, $0.value) },
                     body: Data(buffer.readableBytesView))
    }

    /// `application/x-www-form-urlencoded`, keys sorted for stable requests.
    static func formEncode(_ form: [String: String]) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return form.sorted { $0.key < $1.key }.map { key, value in
            let k = key.addingPercentEncoding(withAllowedCharacters: allowed) ?? key
            let v = value.addingPercentEncoding(withAllowedCharacters: allowed) ?? value
            return "\(k)=\(v)"
        }.joined(separator: "&")
    }

    /// Runs the emulator binary to completion with `arguments` (for option
    /// errors); gives up after `timeout` seconds.
    static func run(arguments: [String], timeout: Double = 20) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = BuildProducts.emulator
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { process.terminate() }
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        try? out.fileHandleForReading.close()
        try? err.fileHandleForReading.close()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
    }
}

/// Resumes a continuation exactly once, whichever of reader and timer comes first.
private final class ResumeOnce<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<Value, any Error>?
    private var done = false

    func set(_ continuation: CheckedContinuation<Value, any Error>) {
        lock.lock()
        defer { lock.unlock() }
        self.continuation = continuation
    }

    func resume(with result: Result<Value, any Error>) {
        lock.lock()
        guard !done, let continuation else { lock.unlock(); return }
        done = true
        self.continuation = nil
        lock.unlock()
        continuation.resume(with: result)
    }
}

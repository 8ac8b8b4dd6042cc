import Foundation
import Testing

/// What one run of the real `tallyfy-vault` binary produced.
struct RunResult: Sendable {
    var status: Int32
    var stdout: String
    var stderr: String
    /// The pid of the process started (an `exec` child keeps it).
    var pid: Int32 = 0

    /// For `#expect` messages: never print a secret-bearing value in tests,
    /// so this shows the status and standard error only.
    var brief: String { "status \(status), stderr: \(stderr)" }
}

/// Children of the test runner must never reach the terminal of whoever runs
/// the suite: a command without an unlock source would otherwise stop at a
/// passphrase prompt on `/dev/tty`. Foundation's `Process` passes the
/// controlling terminal on, so the runner leaves its terminal once, before
/// the first child starts (a new session has none). Tests that need a
/// terminal drive a pty of their own.
let detachedFromTerminal: Void = {
    if setsid() < 0 {
        // Already a session or group leader: drop the terminal instead.
        let tty = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC)
        if tty >= 0 {
            _ = ioctl(tty, UInt(TIOCNOTTY))
            close(tty)
        }
    }
}()

/// Runs a build product as a child process and collects its output.
func runProcess(
    _ executable: URL, _ arguments: [String], environment: [String: String], stdin: String? = nil,
    currentDirectory: URL? = nil
) throws -> RunResult {
    detachedFromTerminal
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    process.environment = environment
    if let currentDirectory { process.currentDirectoryURL = currentDirectory }
    let out = Pipe()
    let err = Pipe()
    let input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    try process.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try input.fileHandleForWriting.close()
    // Read both pipes concurrently so a chatty child never blocks on a full pipe.
    nonisolated(unsafe) var errData = Data()
    let reader = Thread { errData = err.fileHandleForReading.readDataToEndOfFile() }
    reader.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    while !reader.isFinished { usleep(1000) }
    // Closed now, not when Foundation lets go of the Process (which may be
    // never, for one it did not see end): a run of the suite leaked a
    // thousand descriptors, and Foundation's Process.run, which goes through
    // every open descriptor, crashed copying them.
    try? out.fileHandleForReading.close()
    try? err.fileHandleForReading.close()
    return RunResult(
        status: reapedStatus(process), stdout: String(decoding: outData, as: UTF8.self),
        stderr: String(decoding: errData, as: UTF8.self), pid: process.processIdentifier)
}

/// The exit status (or the signal, as Foundation reports it), without
/// `waitUntilExit`: under load Foundation can miss a child's SIGCHLD and wait
/// for ever on a zombie (seen in `Emulator.stop` and here). After a while the
/// child is reaped here instead.
func reapedStatus(_ process: Process) -> Int32 {
    let deadline = Date().addingTimeInterval(10)
    // A zombie is done: no need to wait out the deadline (every
    // `proxy --detach`, whose child outlives it, waited the whole 10 s).
    func zombie() -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")"), stat.index(close, offsetBy: 2) < stat.endIndex
        else { return false }
        return stat[stat.index(close, offsetBy: 2)] == "Z"
    }
    while process.isRunning && !zombie() && Date() < deadline { usleep(2_000) }
    guard process.isRunning else { return process.terminationStatus }
    var raw: Int32 = 0
    guard waitpid(process.processIdentifier, &raw, 0) == process.processIdentifier else {
        process.waitUntilExit()
        return process.terminationStatus
    }
    let signal = raw & 0x7f
    return signal == 0 ? (raw >> 8) & 0xff : signal
}

/// A throwaway home for one test: a private folder, a key file, a vault
/// path, and the environment every run gets (no inherited TALLYFY_*, the
/// cheap Argon2id cost of debug builds).
final class Sandbox: @unchecked Sendable {
    let root: URL
    var environment: [String: String]

    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("tv-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        environment = [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
            "HOME": root.path,
            "TALLYFY_VAULT_TEST_KDF": "fast",
            "TALLYFY_VAULT_FILE": root.appendingPathComponent("vault").path,
            "TALLYFY_VAULT_HTTP_TIMEOUT": "20",  // generous: CI machines can be slow; timeout tests set their own
        ]
    }

    deinit { try? FileManager.default.removeItem(at: root) }

    var vaultPath: String { root.appendingPathComponent("vault").path }
    var keyPath: String { root.appendingPathComponent("key").path }
    func path(_ name: String) -> String { root.appendingPathComponent(name).path }

    /// Runs `tallyfy-vault` with this sandbox's environment plus `extra`.
    @discardableResult
    func run(_ arguments: [String], stdin: String? = nil, env extra: [String: String] = [:]) throws -> RunResult {
        try runProcess(BuildProducts.vault, arguments, environment: environment.merging(extra) { $1 }, stdin: stdin)
    }

    /// Runs and requires status 0.
    @discardableResult
    func ok(_ arguments: [String], stdin: String? = nil, env extra: [String: String] = [:],
        sourceLocation: SourceLocation = #_sourceLocation) throws -> RunResult {
        let result = try run(arguments, stdin: stdin, env: extra)
        #expect(result.status == 0, "\(arguments.first ?? ""): \(result.brief)", sourceLocation: sourceLocation)
        return result
    }

    /// A key file and an empty vault unlocked by it; the key file is then
    /// the default unlock source of every run.
    func initWithKeyFile() throws {
        try ok(["keygen", keyPath])
        environment["TALLYFY_VAULT_KEY_FILE"] = keyPath
        try ok(["init"])
    }

    /// Stores credentials for a client of `emulator`; the secret goes on stdin, never argv.
    func storeCredentials(for emulator: Emulator, secret: String, client: String = "client-test", org: String = "org-test") throws {
        try ok(["credentials", "set", "--org", org, "--client-id", client, "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: secret)
    }

    /// What the vault location stores: the file's bytes, or for etcd every
    /// key under the vault's prefix and its value (`EtcdKeys.stored`).
    func vaultBytes() throws -> Data {
        if let keys = etcdKeys { return try keys.stored() }
        return try Data(contentsOf: URL(fileURLWithPath: vaultPath))
    }

    func write(_ text: String, to name: String, mode: Int = 0o600) throws -> String {
        let path = path(name)
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode])
        return path
    }

    /// Runs a command that must be refused with `status`, and checks the vault
    /// is byte-for-byte what it was (the file, or every key in etcd).
    @discardableResult
    func refused(_ arguments: [String], status: Int32, stdin: String? = nil, env extra: [String: String] = [:],
        sourceLocation: SourceLocation = #_sourceLocation) throws -> RunResult {
        let before = try? vaultBytes()
        let result = try run(arguments, stdin: stdin, env: extra)
        #expect(result.status == status, "\(arguments.joined(separator: " ")): \(result.brief)", sourceLocation: sourceLocation)
        #expect(result.stderr.hasPrefix("tallyfy-vault: "), "error text: \(result.stderr)", sourceLocation: sourceLocation)
        #expect((try? vaultBytes()) == before, "the vault changed after a refused \(arguments.first ?? "")", sourceLocation: sourceLocation)
        return result
    }
}

/// The one "logged-in sandbox" fixture: an emulator that accepts `client`
/// with `secrets` (the first is stored in the vault, on stdin), a sandbox
/// with a key-file vault (a file, or on the shared etcd cluster) whose
/// default profile points at the emulator, and,
/// unless `login` is false, a sealed application token.
struct LoggedIn: Sendable {
    let sandbox: Sandbox
    let emulator: Emulator

    static func start(
        secrets: [String] = ["cs-\(UUID().uuidString)"], stored: String? = nil, client: String = "client-test",
        org: String = "org-test", appTokenTTL: Int? = nil, userTokenTTL: Int? = nil, login: Bool = true, vault: VaultKind = .file
    ) async throws -> LoggedIn {
        let emulator = try await Emulator.start(
            orgs: [org], clients: secrets.map { (client, $0) }, appTokenTTL: appTokenTTL, userTokenTTL: userTokenTTL)
        let sandbox = try Sandbox(vault: vault)
        try sandbox.initWithKeyFile()
        try sandbox.ok(["credentials", "set", "--org", org, "--client-id", client, "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: (stored ?? secrets[0]) + "\n")
        if login { try sandbox.ok(["login"]) }
        return LoggedIn(sandbox: sandbox, emulator: emulator)
    }
}

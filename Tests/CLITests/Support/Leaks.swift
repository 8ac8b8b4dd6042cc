import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A build product started in the background, its output going to files, so
/// dozens can run at once without a thread blocked on each (the test runner's
/// thread pool has as many threads as cores, which would serialize them).
final class BackgroundCommand: @unchecked Sendable {
    let process: Process
    let arguments: [String]
    private let outURL: URL
    private let errURL: URL
    /// Set by `wait`: the pid is no longer this child's.
    private let reaped = Mutex(false)

    var pid: Int32 { process.processIdentifier }
    /// Asked of the kernel, not of Foundation: under load Foundation can
    /// miss a child's SIGCHLD and call a zombie running for minutes. Nor of
    /// /proc: reading `/proc/PID/stat` was seen twice to call a live agent
    /// stopped, and the test then waited for it for ever. `waitid` with
    /// `WNOWAIT` says whether the child has exited without reaping it.
    var isRunning: Bool {
        // Once reaped, its pid may be another process's.
        guard !reaped.withLock({ $0 }) else { return false }
        var info = siginfo_t()
        guard waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 else { return false }  // reaped by Foundation
        return info._sifields._sigchld.si_pid == 0  // nothing to report: still running
    }

    init(_ executable: URL, _ arguments: [String], environment: [String: String], stdin: String? = nil, in folder: URL) throws {
        let id = UUID().uuidString
        outURL = folder.appendingPathComponent("bg-\(id).out")
        errURL = folder.appendingPathComponent("bg-\(id).err")
        for url in [outURL, errURL] {
            FileManager.default.createFile(atPath: url.path, contents: nil, attributes: [.posixPermissions: 0o600])
        }
        self.arguments = arguments
        detachedFromTerminal
        process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = environment
        process.standardOutput = try FileHandle(forWritingTo: outURL)
        process.standardError = try FileHandle(forWritingTo: errURL)
        if let stdin {
            let input = Pipe()
            process.standardInput = input
            try process.run()
            input.fileHandleForWriting.write(Data(stdin.utf8))
            try input.fileHandleForWriting.close()
        } else {
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }
    }

    /// What it has written to standard error so far (a running agent's log).
    var stderrSoFar: String {
        String(decoding: (try? Data(contentsOf: errURL)) ?? Data(), as: UTF8.self)
    }

    /// Waits for the exit; the output files are removed afterwards. One
    /// still running after a minute is killed (SIGKILL, status 137): a test
    /// that waits for a process that never ends fails rather than hangs.
    func wait() -> RunResult {
        // Not `waitUntilExit` alone: it waits for ever on a zombie Foundation
        // missed (see `isRunning`); after a while it is reaped here instead.
        let deadline = Date().addingTimeInterval(60)
        while isRunning && Date() < deadline { usleep(2_000) }
        if isRunning { Glibc.kill(pid, SIGKILL) }
        if process.isRunning {
            var raw: Int32 = 0
            if waitpid(pid, &raw, 0) == pid {
                let signal = raw & 0x7f
                return finished(status: signal == 0 ? (raw >> 8) & 0xff : 128 + signal)
            }
        }
        process.waitUntilExit()
        let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return finished(status: status)
    }

    private func finished(status: Int32) -> RunResult {
        reaped.withLock { $0 = true }
        let stdout = (try? Data(contentsOf: outURL)) ?? Data()
        let stderr = (try? Data(contentsOf: errURL)) ?? Data()
        try? FileManager.default.removeItem(at: outURL)
        try? FileManager.default.removeItem(at: errURL)
        return RunResult(status: status, stdout: String(decoding: stdout, as: UTF8.self),
            stderr: String(decoding: stderr, as: UTF8.self), pid: process.processIdentifier)
    }

    func kill(_ signal: Int32 = SIGKILL) {
        if isRunning { Glibc.kill(process.processIdentifier, signal) }
    }
}

extension Sandbox {
    /// Starts `tallyfy-vault` in the background with this sandbox's environment plus `extra`.
    func launch(_ arguments: [String], stdin: String? = nil, env extra: [String: String] = [:]) throws -> BackgroundCommand {
        try BackgroundCommand(BuildProducts.vault, arguments, environment: environment.merging(extra) { $1 }, stdin: stdin, in: root)
    }
}

/// An exclusive `flock` on a vault's `VAULT.lock`, taken by the test itself
/// the way another tallyfy-vault process would hold it.
final class VaultLockHolder {
    private var descriptor: Int32

    init(vaultPath: String) throws {
        descriptor = open(vaultPath + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            close(descriptor)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
        }
    }

    func release() {
        guard descriptor >= 0 else { return }
        flock(descriptor, LOCK_UN)
        close(descriptor)
        descriptor = -1
    }

    deinit { release() }
}

/// What `/proc/PID` tells about another process.
enum ProcView {
    /// The owner of `/proc/PID/NAME`. The kernel gives a process's files to
    /// root while the process is not dumpable (`task_dump_owner`), so for a
    /// process of a non-root user this is how to read `PR_GET_DUMPABLE` from
    /// outside: root = not dumpable, the process's own uid = dumpable. (Run as
    /// root, the owner is root either way: hence tests run the process as
    /// another user.)
    static func owner(pid: Int32, file: String = "status") -> uid_t? {
        var info = stat()
        guard stat("/proc/\(pid)/\(file)", &info) == 0 else { return nil }
        return info.st_uid
    }

    /// The soft and hard `Max core file size` from `/proc/PID/limits`
    /// (`"0"`, `"unlimited"`, or a number of bytes).
    static func coreLimit(pid: Int32) -> (soft: String, hard: String)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("Max core file size") {
            let fields = line.dropFirst("Max core file size".count).split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2 else { return nil }
            return (String(fields[0]), String(fields[1]))
        }
        return nil
    }

    /// `/proc/PID/comm`: the program's name, which changes on `execve`.
    static func command(pid: Int32) -> String? {
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// `/proc/PID/cmdline` split at its NUL bytes.
    static func arguments(pid: Int32) -> [String]? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
        var parts = data.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        if parts.last == "" { parts.removeLast() }
        return parts
    }

    /// Whether `pid` has `path` open: a writer opens `VAULT.lock` before it
    /// polls for the lock (`FileLock`), so a running writer with the lock
    /// file open while another holds the lock is one that waits for it.
    static func hasOpen(pid: Int32, path: String) -> Bool {
        let folder = "/proc/\(pid)/fd"
        guard let descriptors = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return false }
        return descriptors.contains { (try? FileManager.default.destinationOfSymbolicLink(atPath: folder + "/" + $0)) == path }
    }

    /// Polls `condition` every 10 ms for up to `seconds`.
    static func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(10_000)
        }
        return condition()
    }
}

/// Secret material a test must never find where it does not belong.
struct Needles: Sendable {
    /// What must appear nowhere: client secrets, passphrases.
    var secrets: [String: String] = [:]
    /// What may appear only where a command's job is to print it: tokens.
    var tokens: Set<String> = []

    /// The names of the secrets `text` contains.
    func secretsIn(_ text: String) -> [String] {
        secrets.filter { text.contains($0.value) }.map(\.key).sorted()
    }

    /// How many of the known tokens `text` contains (never the tokens themselves).
    func tokenCount(in text: String) -> Int {
        tokens.filter { text.contains($0) }.count
    }

    /// The names of the secrets, and the count of tokens, found in `data`, as
    /// raw bytes (a file need not be text).
    func found(in data: Data) -> (secrets: [String], tokens: Int) {
        let bytes = [UInt8](data)
        func has(_ needle: String) -> Bool {
            let pattern = Array(needle.utf8)
            guard !pattern.isEmpty, bytes.count >= pattern.count else { return false }
            for start in 0...(bytes.count - pattern.count) where bytes[start] == pattern[0] {
                if Array(bytes[start..<(start + pattern.count)]) == pattern { return true }
            }
            return false
        }
        return (secrets.filter { has($0.value) }.map(\.key).sorted(), tokens.filter(has).count)
    }
}

/// Every regular file under `folder` (hidden ones too), recursively.
func filesBelow(_ folder: URL) -> [URL] {
    guard let walker = FileManager.default.enumerator(at: folder, includingPropertiesForKeys: [.isRegularFileKey]) else { return [] }
    return walker.compactMap { $0 as? URL }.filter {
        (try? $0.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true
    }
}

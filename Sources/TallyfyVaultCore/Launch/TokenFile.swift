#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The file `exec --keep-fresh` keeps the current token in, for the child to
/// read (`TALLYFY_TOKEN_FILE`).
///
/// Layout: a private runtime folder, `$XDG_RUNTIME_DIR/tallyfy-vault/` (when
/// `XDG_RUNTIME_DIR` is unset or not absolute, `/tmp/tallyfy-vault-UID/`),
/// created 0700 and refused unless it is a real folder owned by this user
/// and closed to everyone else. In it each supervisor makes its own 0700
/// folder `exec-PID-STARTTIME/` holding `token` (0600): the bare token, no
/// line ending. Every write goes to a temporary file in the same folder and
/// is renamed over `token`, so a reader sees the old token or the new one,
/// never a partial file. The folder is removed when the supervisor ends; a
/// folder left by a supervisor that was killed (its PID gone, or reused by a
/// process that started at another time) is removed by the next one.
public final class TokenFile: Sendable {
    /// The supervisor's own folder.
    public let folder: String
    /// The token file.
    public let path: String

    public static let fileName = "token"
    static let prefix = "exec-"

    private init(folder: String) {
        self.folder = folder
        self.path = folder + "/" + Self.fileName
    }

    /// The shared private runtime folder, made when missing.
    public static func runtimeFolder(environment: [String: String]) throws -> String {
        let base: String
        if let runtime = environment["XDG_RUNTIME_DIR"], runtime.hasPrefix("/") {
            base = (runtime.hasSuffix("/") ? String(runtime.dropLast()) : runtime) + "/tallyfy-vault"
        } else {
            base = "/tmp/tallyfy-vault-\(getuid())"
        }
        try makePrivateFolder(base)
        return base
    }

    /// Removes what killed supervisors left, then makes this process's folder.
    public static func create(environment: [String: String]) throws -> TokenFile {
        let base = try runtimeFolder(environment: environment)
        removeStale(in: base)
        let folder = base + "/" + prefix + "\(getpid())-\(startTime(of: getpid()) ?? 0)"
        removeTree(folder)  // our own PID and start time: only ever a leftover of this very process
        try makePrivateFolder(folder)
        return TokenFile(folder: folder)
    }

    /// Replaces the token atomically (temporary file, then rename).
    public func write(_ token: String) throws {
        let temporary = folder + "/.\(Self.fileName)-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw Self.ioError("could not write the token file in \(folder)") }
        let bytes = Array(token.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else {
                let error = Self.ioError("could not write the token file in \(folder)")
                close(fd)
                unlink(temporary)
                throw error
            }
            offset += written
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let error = Self.ioError("could not replace the token file \(path)")
            unlink(temporary)
            throw error
        }
    }

    /// Removes the token file and the folder.
    public func remove() {
        Self.removeTree(folder)
    }

    /// Folders of supervisors that no longer run. Best effort: what cannot
    /// be removed is left for the next start.
    static func removeStale(in base: String) {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: base) else { return }
        for name in entries where name.hasPrefix(prefix) {
            let parts = name.dropFirst(prefix.count).split(separator: "-")
            guard parts.count == 2, let pid = Int32(parts[0]), let started = UInt64(parts[1]) else { continue }
            if isRunning(pid: pid, startedAt: started) { continue }
            removeTree(base + "/" + name)
        }
    }

    /// Whether the process that made a folder still runs: its PID exists and
    /// (when /proc tells) started at the recorded time, so a reused PID does
    /// not keep a stale folder alive.
    static func isRunning(pid: Int32, startedAt: UInt64) -> Bool {
        if kill(pid, 0) != 0 && errno == ESRCH { return false }
        guard let actual = startTime(of: pid) else { return true }
        return startedAt == 0 || actual == startedAt
    }

    /// Field 22 of `/proc/PID/stat` (clock ticks since boot), read after the
    /// command name, which may itself hold spaces and parentheses.
    static func startTime(of pid: Int32) -> UInt64? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/stat"),
            let close = data.lastIndex(of: UInt8(ascii: ")"))
        else { return nil }
        let fields = data[(close + 1)...].split(separator: UInt8(ascii: " "))
        // After the name: state is field 3, so start time (22) is index 19.
        guard fields.count > 19 else { return nil }
        return UInt64(String(decoding: fields[19], as: UTF8.self))
    }

    /// A folder only this user can enter: made 0700 when missing; refused
    /// when it is a symbolic link, not a folder, another user's, or open to
    /// others.
    static func makePrivateFolder(_ path: String) throws {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw ioError("could not create the private folder \(path)")
        }
        var info = stat()
        guard lstat(path, &info) == 0 else { throw ioError("could not inspect \(path)") }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw VaultError(.refused, "\(path) is not a folder", hint: "remove it; tallyfy-vault makes it as a private folder")
        }
        guard info.st_uid == getuid() else {
            throw VaultError(.refused, "\(path) belongs to another user (uid \(info.st_uid))",
                hint: "someone may be trying to read your tokens; remove it, or set XDG_RUNTIME_DIR to your own private folder")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw VaultError(.refused, "\(path) is accessible by other users (mode \(String(info.st_mode & 0o777, radix: 8)))",
                hint: "run `chmod 700 \(path)`")
        }
    }

    static func removeTree(_ folder: String) {
        if let entries = try? FileManager.default.contentsOfDirectory(atPath: folder) {
            for name in entries { unlink(folder + "/" + name) }
        }
        rmdir(folder)
    }

    static func ioError(_ message: String) -> VaultError {
        VaultError(.io, "\(message): \(String(cString: strerror(errno)))")
    }
}

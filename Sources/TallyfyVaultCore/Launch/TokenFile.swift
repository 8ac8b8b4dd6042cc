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
package final class TokenFile: Sendable {
    /// The supervisor's own folder.
    package let folder: String
    /// The token file.
    package let path: String
    /// A private folder made for this supervisor alone because the shared
    /// one was unsafe (`RuntimeFolder`): removed with the token's folder.
    private let ownBase: String?

    package static let fileName = "token"
    static let prefix = "exec-"

    private init(folder: String, ownBase: String?) {
        self.folder = folder
        self.path = folder + "/" + Self.fileName
        self.ownBase = ownBase
    }

    /// The shared private runtime folder, made when missing (`RuntimeFolder`).
    package static func runtimeFolder(environment: [String: String]) throws -> String {
        try RuntimeFolder.prepare(environment: environment).path
    }

    /// Removes what killed supervisors left, then makes this process's
    /// folder. `note` hears when the shared folder was unsafe and a fresh
    /// private one is used instead.
    package static func create(environment: [String: String], note: (String) -> Void = { _ in }) throws -> TokenFile {
        let (base, fallback) = try RuntimeFolder.prepare(environment: environment)
        if let fallback { note(fallback) }
        removeStale(in: base)
        let folder = base + "/" + prefix + "\(getpid())-\(startTime(of: getpid()) ?? 0)"
        removeTree(folder)  // our own PID and start time: only ever a leftover of this very process
        try makePrivateFolder(folder)
        return TokenFile(folder: folder, ownBase: fallback == nil ? nil : base)
    }

    /// Replaces the token atomically (temporary file, then rename).
    package func write(_ token: String) throws {
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
    package func remove() {
        Self.removeTree(folder)
        if let ownBase { rmdir(ownBase) }
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
        try RuntimeFolder.makePrivate(path)
    }

    /// Removes `folder` and the files in it, never following a symbolic
    /// link: the folder is opened with O_NOFOLLOW and its files removed
    /// relative to that descriptor (`unlinkat`), so a link planted in its
    /// place (or a folder swapped for one meanwhile) costs nothing but the
    /// link itself. A link is removed; what it points to is not touched.
    static func removeTree(_ folder: String) {
        let descriptor = open(folder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard descriptor >= 0 else {
            var info = stat()
            if lstat(folder, &info) == 0 && info.st_mode & S_IFMT == S_IFLNK { unlink(folder) }
            return
        }
        guard let listing = fdopendir(descriptor) else {
            close(descriptor)
            return
        }
        var names: [String] = []
        while let entry = readdir(listing) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: entry.pointee.d_name)) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        // Files only (flag 0): a folder inside is left, and with it this one.
        for name in names { unlinkat(dirfd(listing), name, 0) }
        closedir(listing)
        rmdir(folder)
    }

    static func ioError(_ message: String) -> VaultError {
        VaultError(.io, "\(message): \(String(cString: strerror(errno)))")
    }
}

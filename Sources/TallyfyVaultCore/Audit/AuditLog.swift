#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// One audit log file: appended to under an exclusive `flock`, with
/// `O_APPEND`, one `write` per record, so any number of processes (many
/// `exec`s at once, the agent) keep one valid chain in it. Mode 0600 in a
/// 0700 folder; a log that other users can access, or that is not this
/// user's regular file, is refused.
///
/// When the file passes `maxBytes` it is renamed `LOG.1` (`LOG.1` to
/// `LOG.2`, and so on; none is deleted) and a new file continues the chain:
/// its first record's number follows, and its `prev` links to, the last
/// record of `LOG.1`. Removing old files is the owner's call, and `verify`
/// then reports their records missing.
package struct AuditLog: Sendable {
    package let path: String
    package var maxBytes: Int = 64 << 20

    package init(path: String) {
        self.path = path
    }

    /// The end of the chain: the last record's number and link hash.
    package struct Tail: Sendable, Equatable {
        var seq: UInt64
        var link: String
        static let empty = Tail(seq: 0, link: AuditKey.genesis)
    }

    /// Appends the line `build` makes for the next number and link, under the lock.
    @discardableResult
    func append(_ build: (Tail) -> [UInt8]) throws -> Tail {
        if access(folder, F_OK) != 0 { try FileSafety.makeDirectory(folder) }
        while true {
            let fd = try openForAppend()
            defer { close(fd) }
            guard lockExclusive(fd) else { throw failure("lock") }
            // Another process rotated the file while this one waited for the lock: start over on the new one.
            var open = stat()
            var named = stat()
            guard fstat(fd, &open) == 0 else { throw failure("read") }
            guard stat(path, &named) == 0, named.st_ino == open.st_ino, named.st_dev == open.st_dev else { continue }
            let size = Int(open.st_size)
            if size >= maxBytes {
                rotate()
                continue
            }
            var tail = try Self.tail(of: fd, size: size)
            if size == 0, let rotated = try? Self.tail(ofFile: path + ".1") { tail = rotated }
            var line = build(tail)
            line.append(0x0A)
            if size > 0, try Self.lastByte(fd, size: size) != 0x0A { line.insert(0x0A, at: 0) }  // a torn line stays its own
            guard writeAll(fd, line) else {
                let error = failure("write")
                _ = ftruncate(fd, off_t(size))  // no half record left behind
                throw error
            }
            return Tail(seq: tail.seq + 1, link: AuditKey.link(Array(line.dropLast().drop(while: { $0 == 0x0A }))))
        }
    }

    /// Fails as `append` would on a log that can't be appended to (creating it, empty, when missing).
    func probe() throws {
        try FileSafety.makeDirectory(folder)
        close(try openForAppend())
    }

    /// The end of the chain now (under a shared lock), for sealing it into the vault.
    func currentTail() throws -> Tail {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY)
        guard fd >= 0 else {
            if errno == ENOENT { return (try? Self.tail(ofFile: path + ".1")) ?? .empty }
            throw failure("read")
        }
        defer { close(fd) }
        while flock(fd, LOCK_SH) != 0 { guard errno == EINTR else { throw failure("lock") } }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw failure("read") }
        if info.st_size == 0 { return (try? Self.tail(ofFile: path + ".1")) ?? .empty }
        return try Self.tail(of: fd, size: Int(info.st_size))
    }

    var folder: String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// Every file of this log, oldest first (`LOG.N` … `LOG.1`, `LOG`).
    package func files() -> [String] {
        var rotated: [String] = []
        var index = 1
        while access("\(path).\(index)", F_OK) == 0 {
            rotated.append("\(path).\(index)")
            index += 1
        }
        return rotated.reversed() + (access(path, F_OK) == 0 ? [path] : [])
    }

    private func openForAppend() throws -> Int32 {
        let fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0o600)
        guard fd >= 0 else { throw failure("open") }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            close(fd)
            throw failure("open")
        }
        guard info.st_mode & S_IFMT == S_IFREG, info.st_uid == geteuid(), info.st_mode & 0o077 == 0 else {
            close(fd)
            throw VaultError(.io, "the audit log \(path) is not a private regular file of this user (mode 0600)",
                hint: "run `chmod 600 \(path)`, or point TALLYFY_VAULT_AUDIT_FILE at a file of your own")
        }
        return fd
    }

    private func lockExclusive(_ fd: Int32) -> Bool {
        while flock(fd, LOCK_EX) != 0 { guard errno == EINTR else { return false } }
        return true
    }

    /// Renames `LOG` to `LOG.1` (and `LOG.N` to `LOG.N+1`) under the lock.
    private func rotate() {
        var index = 0
        while access("\(path).\(index + 1)", F_OK) == 0 { index += 1 }
        while index >= 1 {
            rename("\(path).\(index)", "\(path).\(index + 1)")
            index -= 1
        }
        rename(path, "\(path).1")
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
    }

    private func failure(_ step: String) -> VaultError {
        VaultError(.io, "could not \(step) the audit log \(path): \(String(cString: strerror(errno)))",
            hint: "check the folder's permissions and free space, or point TALLYFY_VAULT_AUDIT_FILE elsewhere")
    }

    private static func lastByte(_ fd: Int32, size: Int) throws -> UInt8 {
        var byte: UInt8 = 0
        guard pread(fd, &byte, 1, off_t(size - 1)) == 1 else { throw VaultError(.io, "could not read the audit log") }
        return byte
    }

    static func tail(ofFile path: String) throws -> Tail {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw VaultError(.io, "could not read \(path)") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw VaultError(.io, "could not read \(path)") }
        return try tail(of: fd, size: Int(info.st_size))
    }

    /// The last line's number and link hash, reading backwards from the end
    /// in growing chunks (a record is a few hundred bytes).
    static func tail(of fd: Int32, size: Int) throws -> Tail {
        guard size > 0 else { return .empty }
        var chunk = min(size, 2048)
        while true {
            var bytes = [UInt8](repeating: 0, count: chunk)
            let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, chunk, off_t(size - chunk)) }
            guard count == chunk else { throw VaultError(.io, "could not read the audit log's last record") }
            var end = bytes.count
            while end > 0 && bytes[end - 1] == 0x0A { end -= 1 }
            if let newline = bytes[..<end].lastIndex(of: 0x0A) {
                return tail(line: bytes[(newline + 1)..<end])
            }
            if chunk == size { return tail(line: bytes[..<end]) }
            chunk = min(size, chunk * 4)
        }
    }

    /// `{"seq":N,…`: the number read from the front of the line, its link from all of it.
    static func tail(line: ArraySlice<UInt8>) -> Tail {
        Tail(seq: seq(of: line) ?? 0, link: AuditKey.link(Array(line)))
    }

    static func seq(of line: some Collection<UInt8>) -> UInt64? {
        let head = Array("{\"seq\":".utf8)
        guard line.starts(with: head) else { return nil }
        let digits = line.dropFirst(head.count).prefix { $0 >= 0x30 && $0 <= 0x39 }
        guard !digits.isEmpty, digits.count < 20 else { return nil }
        return UInt64(String(decoding: digits, as: UTF8.self))
    }
}

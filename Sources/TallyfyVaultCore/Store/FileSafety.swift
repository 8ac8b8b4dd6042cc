#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#endif

/// Permission checks and durable writes: the "On disk" rules of SECURITY.md.
enum FileSafety {
    /// Refuses a file that the group or others can read or write, as ssh does
    /// with private keys, and says which `chmod` fixes it.
    static func requirePrivate(_ info: stat, _ path: String, what: String) throws {
        if info.st_mode & 0o077 != 0 {
            throw VaultError(.refused,
                "\(what) \(path) is accessible by other users (mode \(String(info.st_mode & 0o777, radix: 8)))",
                hint: "run `chmod 600 \(path)` and check who may have read it")
        }
    }

    /// Opens `path` for reading after checking, on the open descriptor (no
    /// race with a rename), that only its owner can access it.
    ///
    /// It opens with `O_NONBLOCK` so that a FIFO (or a device) given as a
    /// vault, key file or passphrase file is refused at once by the
    /// regular-file check instead of blocking `open` until a writer comes;
    /// the flag is cleared again before anything is read.
    static func openPrivate(_ path: String, what: String) throws -> (descriptor: Int32, size: Int) {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else { throw missingOrUnreadable(path, what: what) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let error = missingOrUnreadable(path, what: what)  // before close() can change errno
            close(fd)
            throw error
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw VaultError(.io, "\(what) \(path) is not a regular file",
                hint: "give the path of a regular file (not a folder, FIFO, socket or device)")
        }
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0 else {
            let error = missingOrUnreadable(path, what: what)
            close(fd)
            throw error
        }
        do { try requirePrivate(info, path, what: what) } catch {
            close(fd)
            throw error
        }
        return (fd, Int(info.st_size))
    }

    /// Reads a private file, mapped rather than copied, so a large vault costs
    /// only the pages a lookup touches. The vault is replaced by rename, never
    /// written in place, so the mapping stays valid.
    static func readPrivate(_ path: String, what: String) throws -> Data {
        let (fd, size) = try openPrivate(path, what: what)
        defer { close(fd) }
        return try readAll(fd, size: size, path: path, what: what)
    }

    /// The `size` bytes of the open private file `fd`, mapped (see `readPrivate`).
    static func readAll(_ fd: Int32, size: Int, path: String, what: String) throws -> Data {
        guard size > 0 else { return Data() }
        guard let pointer = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), pointer != MAP_FAILED else {
            throw VaultError(.io, "could not read \(what) \(path): \(String(cString: strerror(errno)))")
        }
        return Data(bytesNoCopy: pointer, count: size, deallocator: .custom { munmap($0, $1) })
    }

    /// Reads a small private file (a key file, a passphrase file) straight
    /// into guarded memory.
    static func readSecretFile(_ path: String, what: String, maxLength: Int) throws -> SecretBytes {
        let (fd, size) = try openPrivate(path, what: what)
        defer { close(fd) }
        guard size <= maxLength else {
            throw VaultError(.usage, "\(what) \(path) is \(size) bytes, more than the \(maxLength) expected")
        }
        var buffer = SecretBytes(count: size)
        let complete = buffer.withUnsafeMutableBytes { bytes -> Bool in
            var offset = 0
            while offset < size {
                let n = read(fd, bytes.baseAddress! + offset, size - offset)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
        guard complete else { throw VaultError(.io, "could not read \(what) \(path)") }
        return buffer
    }

    /// A folder others could write to lets them swap the vault: refused. So
    /// is a folder owned by another user (root excepted), even when sticky:
    /// its owner could replace the vault or plant its lock file.
    static func requireSafeDirectory(_ path: String) throws {
        var info = stat()
        guard stat(path, &info) == 0 else { return }
        if info.st_uid != geteuid() && info.st_uid != 0 {
            throw VaultError(.refused,
                "the vault's folder \(path) belongs to another user (uid \(info.st_uid))",
                hint: "keep the vault in a folder of your own, e.g. the default under ~/.local/share/tallyfy-vault")
        }
        if info.st_mode & 0o022 != 0 && info.st_mode & S_ISVTX == 0 {
            throw VaultError(.refused,
                "the vault's folder \(path) is writable by other users (mode \(String(info.st_mode & 0o777, radix: 8)))",
                hint: "run `chmod 700 \(path)`")
        }
    }

    static func missingOrUnreadable(_ path: String, what: String) -> VaultError {
        let code = errno
        if code == ENOENT {
            return VaultError(.notFound, "\(what) \(path) does not exist",
                hint: what == "the vault" ? "create one with `tallyfy-vault init`, or point --vault / TALLYFY_VAULT_FILE at it" : nil)
        }
        return VaultError(.io, "could not read \(what) \(path): \(String(cString: strerror(code)))")
    }

    /// Creates `directory` (and parents) with mode 0700 when missing.
    static func makeDirectory(_ directory: String) throws {
        guard !FileManager.default.fileExists(atPath: directory) else { return }
        do {
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw VaultError(.io, "could not create the folder \(directory)", hint: "check its parent's permissions")
        }
    }

    /// Writes `data` to a new temporary file beside `path`, `fsync`s it,
    /// renames it over `path` and `fsync`s the folder: a crash at any moment
    /// leaves either the old file or the new one. With `exclusive`, an
    /// existing `path` is never replaced (link instead of rename).
    static func atomicReplace(_ path: String, with data: Data, mode: mode_t = 0o600, exclusive: Bool = false) throws {
        let url = URL(fileURLWithPath: path)
        let directory = url.deletingLastPathComponent().path
        var template = Array("\(directory)/.\(url.lastPathComponent).tmp-XXXXXX".utf8CString)
        // mkstemp creates with O_CREAT | O_EXCL, which never follows a
        // symbolic link at the name (POSIX): a planted link makes it fail,
        // as O_NOFOLLOW would. (mkostemp, which takes O_CLOEXEC at once, is a
        // GNU extension Swift's Glibc module does not export.)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        if fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        guard fd >= 0 else {
            throw VaultError(.io, "could not create a temporary file in \(directory): \(String(cString: strerror(errno)))",
                hint: "check that the folder exists and is writable, and that the disk is not full")
        }
        let temporary = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var created = stat()
        guard fstat(fd, &created) == 0, created.st_uid == geteuid(), created.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            unlink(temporary)
            throw VaultError(.io, "the temporary file \(temporary) is not a regular file of this user")
        }
        var committed = false
        defer {
            if !committed { unlink(temporary) }
        }
        func fail(_ step: String) -> VaultError {
            let reason = String(cString: strerror(errno))
            close(fd)
            return VaultError(.io, "could not \(step) \(path): \(reason)", hint: "the vault was left as it was; check free space and permissions")
        }
        guard fchmod(fd, mode) == 0 else { throw fail("set the mode of") }
        let written = data.withUnsafeBytes { buffer -> Bool in
            var offset = 0
            while offset < buffer.count {
                let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 { if errno == EINTR { continue }; return false }
                offset += n
            }
            return true
        }
        guard written else { throw fail("write") }
        guard fsync(fd) == 0 else { throw fail("flush") }
        close(fd)
        if exclusive {
            guard link(temporary, path) == 0 else {
                let code = errno
                throw code == EEXIST
                    ? VaultError(.usage, "\(path) exists already; refusing to overwrite it", hint: "choose another path, or move the old file away first")
                    : VaultError(.io, "could not create \(path): \(String(cString: strerror(code)))")
            }
        } else {
            guard rename(temporary, path) == 0 else {
                throw VaultError(.io, "could not replace \(path): \(String(cString: strerror(errno)))", hint: "the vault was left as it was")
            }
            committed = true
        }
        syncDirectory(directory)
    }

    /// Where a write to `path` goes, and what it must keep: a symbolic link
    /// is resolved once (the link stays, its target is replaced, so other
    /// paths to the vault see the change), and an existing file must belong
    /// to this user, whose replacement keeps its mode. A write as another
    /// user (root included) would hand the vault to that user: refused.
    static func writeTarget(_ path: String) throws -> (path: String, mode: mode_t) {
        var target = path
        var info = stat()
        if lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFLNK {
            guard let resolved = realpath(path, nil) else {
                throw VaultError(.io, "the vault \(path) is a symbolic link to a missing file (\(String(cString: strerror(errno))))",
                    hint: "point the link at the vault, or give --vault the vault's own path")
            }
            target = String(cString: resolved)
            free(resolved)
        }
        guard stat(target, &info) == 0 else { return (target, 0o600) }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw VaultError(.io, "the vault \(target) is not a regular file")
        }
        guard info.st_uid == geteuid() else {
            throw VaultError(.refused,
                "the vault \(target) belongs to another user (uid \(info.st_uid)); writing it as uid \(geteuid()) would take it from them",
                hint: "run the command as the vault's owner")
        }
        return (target, info.st_mode & 0o700)
    }

    /// Removes temporary files that a killed writer left beside `path`. Each
    /// is a complete sealed copy of an older vault (openable with keys that
    /// were removed since), so they must not pile up. Only writers holding
    /// the vault lock create them, so a caller holding the lock may remove them.
    static func removeTemporaries(of path: String) {
        let url = URL(fileURLWithPath: path)
        let prefix = ".\(url.lastPathComponent).tmp-"
        let directory = url.deletingLastPathComponent().path
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix(prefix) {
            unlink(directory + "/" + name)
        }
    }

    /// `fsync` on the folder makes the rename itself durable.
    static func syncDirectory(_ directory: String) {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }
}


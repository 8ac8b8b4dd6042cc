#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#endif

/// An exclusive `flock` on the vault's sidecar lock file.
///
/// The lock lives on `VAULT.lock`, not on the vault itself, because the vault
/// is replaced by rename on every write: a lock on the old inode would not
/// exclude a writer that opened the new one. The lock file holds no data.
final class FileLock {
    private let descriptor: Int32

    private init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    /// Waits up to `timeout` for the lock, polling, so a hung holder gives
    /// `.tryLater` (exit 75) instead of hanging the caller. The wait suspends
    /// instead of blocking a thread, so a renewal waiting for another
    /// process's lock holds none of the cooperative pool's few threads (a
    /// helper's deadline timer needs one).
    static func acquire(path: String, timeout: Duration) async throws -> FileLock {
        let fd = try openLockFile(path)
        let deadline = ContinuousClock.now + timeout
        var pause = Duration.milliseconds(2)
        while try !tryLock(fd, path: path, deadline: deadline, timeout: timeout) {
            do {
                try await Task.sleep(for: pause)
            } catch {
                close(fd)
                throw error
            }
            pause = min(pause * 2, .milliseconds(50))
        }
        return FileLock(descriptor: fd)
    }

    private static func openLockFile(_ path: String) throws -> Int32 {
        // Never through a symbolic link (another user could point it at a
        // file of ours), and only a regular file of this user: a lock file
        // someone else owns could be held by them for ever.
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0o600)
        guard fd >= 0 else {
            let code = errno
            throw code == ELOOP
                ? VaultError(.refused, "the lock file \(path) is a symbolic link; refusing to follow it",
                    hint: "remove it (`rm \(path)`) and check who made it")
                : VaultError(.io, "could not open the lock file \(path): \(String(cString: strerror(code)))",
                    hint: "check that the vault's folder is writable")
        }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_uid == geteuid() else {
            close(fd)
            throw VaultError(.refused, "the lock file \(path) is not a regular file of this user",
                hint: "remove it (`rm \(path)`) and check who made it")
        }
        return fd
    }

    /// One attempt: `true` when locked, `false` to wait and try again; closes
    /// `fd` and throws on an error or once `deadline` has passed.
    private static func tryLock(_ fd: Int32, path: String, deadline: ContinuousClock.Instant, timeout: Duration) throws -> Bool {
        if flock(fd, LOCK_EX | LOCK_NB) == 0 { return true }
        guard errno == EWOULDBLOCK || errno == EINTR else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw VaultError(.io, "could not lock \(path): \(reason)")
        }
        guard ContinuousClock.now < deadline else {
            close(fd)
            throw VaultError(.tryLater, "the vault is locked by another tallyfy-vault process (waited \(timeout))",
                hint: "try again later; if no other process is running, check what holds \(path)")
        }
        return false
    }

    deinit {
        flock(descriptor, LOCK_UN)
        close(descriptor)
    }
}

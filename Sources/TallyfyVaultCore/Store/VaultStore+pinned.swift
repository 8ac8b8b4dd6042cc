#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#endif

/// Which version of a file is on disk, told apart without reading it.
///
/// Every change to a vault is an atomic replace: a new file (a new inode)
/// renamed over the old one, with new times. Device and inode say which
/// file; size and the change and modification times in nanoseconds catch
/// anything written in place, and `chmod`/`chown` (they change the ctime).
package struct FileIdentity: Equatable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modified: Int64
    var changed: Int64

    init(_ info: stat) {
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        modified = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        changed = Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec)
    }
}

/// A vault opened by a long-lived reader (the agent), with the identity of
/// the file it was read from, taken on the descriptor it was read through
/// (no rename can slip in between).
///
/// The descriptor stays open for as long as this does: the old file, even
/// once replaced, keeps its inode, so no later vault file can be given the
/// same inode number, and a replace is seen however coarse the file
/// system's clock is.
package final class PinnedVault: @unchecked Sendable {
    /// Not safe to use from two threads at once: the holder serialises.
    package let vault: UnlockedVault
    /// The file `vault` was read from.
    package let identity: FileIdentity
    private let descriptor: Int32

    init(vault: UnlockedVault, identity: FileIdentity, descriptor: Int32) {
        self.vault = vault
        self.identity = identity
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }
}

extension VaultStore {
    /// Opens the vault and keeps its file pinned (see `PinnedVault`), with
    /// the same checks as `open`. A vault in etcd has no file: `.usage`.
    package func openPinned(with unlocker: VaultUnlocker) throws -> PinnedVault {
        guard remote == nil else { throw VaultError(.usage, "a vault in etcd has no file to pin") }
        try FileSafety.requireSafeDirectory(directory)
        let (descriptor, _) = try FileSafety.openPrivate(path, what: "the vault")
        do {
            var info = stat()
            guard fstat(descriptor, &info) == 0 else { throw FileSafety.missingOrUnreadable(path, what: "the vault") }
            let bytes = try FileSafety.readAll(descriptor, size: Int(info.st_size), path: path, what: "the vault")
            let vault = try opened(try ParsedVault(parsing: bytes, readSummary: false), with: unlocker)
            return PinnedVault(vault: vault, identity: FileIdentity(info), descriptor: descriptor)
        } catch {
            close(descriptor)
            throw error
        }
    }

    /// Whether the file at `path` is still the one `pinned` was read from,
    /// in a folder that is still safe: one `stat` each, nothing read. When
    /// not, the caller opens the vault again (and hears any refusal then).
    package func isCurrent(_ pinned: PinnedVault) -> Bool {
        guard remote == nil, (try? FileSafety.requireSafeDirectory(directory)) != nil else { return false }
        var info = stat()
        return stat(path, &info) == 0 && FileIdentity(info) == pinned.identity
    }
}

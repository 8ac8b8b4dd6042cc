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
    /// The file `vault` was read from; `nil` when it was read from an etcd
    /// cluster, which has no file to pin: then it is never current.
    let identity: FileIdentity?
    private let descriptor: Int32

    init(vault: UnlockedVault, identity: FileIdentity?, descriptor: Int32) {
        self.vault = vault
        self.identity = identity
        self.descriptor = descriptor
    }

    deinit { if descriptor >= 0 { close(descriptor) } }
}

extension VaultStore {
    /// Opens the vault and keeps the file it was read from pinned (see
    /// `PinnedVault`), with the same checks as `open`.
    ///
    /// For a vault in etcd that file is this machine's cache, while a watch
    /// keeps it current (the agent's `VaultWatch`); without a live watch the
    /// vault is read as `open` reads it and pinned to nothing, so the next
    /// call reads it again.
    package func openPinned(with unlocker: VaultUnlocker) async throws -> PinnedVault {
        guard let file = pinnableFile else { return PinnedVault(vault: try await open(with: unlocker), identity: nil, descriptor: -1) }
        try FileSafety.requireSafeDirectory(file.directory)
        let (descriptor, _) = try FileSafety.openPrivate(file.path, what: file.what)
        do {
            var info = stat()
            guard fstat(descriptor, &info) == 0 else { throw FileSafety.missingOrUnreadable(file.path, what: file.what) }
            let bytes = try file.sealedBytes(try FileSafety.readAll(descriptor, size: Int(info.st_size), path: file.path, what: file.what))
            let vault = try await opened(try ParsedVault(parsing: bytes, readSummary: false), with: unlocker) {
                try await parsed(readSummary: false)
            }
            return PinnedVault(vault: vault, identity: FileIdentity(info), descriptor: descriptor)
        } catch {
            close(descriptor)
            throw error
        }
    }

    /// Whether the file `pinned` was read from is still there, unchanged, in
    /// a folder that is still safe (and, for etcd, still kept current by a
    /// watch): one `stat` each, nothing read. When not, the caller opens the
    /// vault again (and hears any refusal then).
    package func isCurrent(_ pinned: PinnedVault) -> Bool {
        guard let identity = pinned.identity, let file = pinnableFile, (try? FileSafety.requireSafeDirectory(file.directory)) != nil
        else { return false }
        var info = stat()
        return stat(file.path, &info) == 0 && FileIdentity(info) == identity
    }

    /// The file whose bytes are the vault now: the vault file, or the cache
    /// of an etcd vault while a watch keeps it current; `nil` otherwise.
    private var pinnableFile: PinnableFile? {
        guard let remote else { return PinnableFile(path: path, directory: directory, what: "the vault") { $0 } }
        guard let remote = try? remote.get(), remote.watch.isLive, remote.cache.exists else { return nil }
        let cache = remote.cache
        return PinnableFile(path: cache.path, directory: cache.directory, what: "the cached copy of the vault") {
            try cache.decode($0).bytes
        }
    }
}

private struct PinnableFile {
    let path: String
    let directory: String
    let what: String
    /// The sealed vault in the file's bytes.
    let sealedBytes: (Data) throws -> Data
}

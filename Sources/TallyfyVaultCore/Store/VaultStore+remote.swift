#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A vault whose sealed bytes live in etcd: the same reads and writes as a
/// vault file, with etcd's transactions and lease-held lock in place of
/// `flock` and rename, and this machine's private cache in front.
///
/// - Reads ask the cluster and keep the cache up to date; when the cluster is
///   unreachable they use the cache, with one warning.
/// - A command's one read (`VaultStore.read`) takes the cache first: a
///   fresh sealed token is handed out without a round trip to etcd.
/// - Writes take the fleet-wide lock, re-read from the cluster (never the
///   cache), apply the change and store it conditioned on the revision read.
///   With the cluster unreachable they fail (69) and nothing changes.
struct RemoteVault: Sendable {
    let location: EtcdLocation
    let cache: RemoteCache

    /// `nil` for a file path; a refused location is kept as its error and
    /// thrown by the first operation (`VaultStore.init` cannot throw).
    static func parse(_ path: String, environment: [String: String]) -> Result<RemoteVault, VaultError>? {
        do {
            switch try VaultLocation(parsing: path, environment: environment) {
            case .file: return nil
            case .etcd(let location):
                return .success(RemoteVault(location: location, cache: RemoteCache(location: location, environment: environment)))
            }
        } catch let error as VaultError {
            return .failure(error)
        } catch {
            return .failure(VaultError(.usage, "\(path.prefix(200)) is not a vault location"))
        }
    }

    func connection() throws -> any RemoteSealedBytes { try RemoteLocations.connect(location) }

    var notFound: VaultError {
        VaultError(.notFound, "there is no vault at \(location.text)",
            hint: "create one with `tallyfy-vault --vault \(location.text) init`, or move one there with `tallyfy-vault migrate --to \(location.text)`")
    }

    func exists() throws -> Bool { try connection().read() != nil }

    func requireAbsent() throws {
        if try connection().read() != nil {
            throw VaultError(.usage, "a vault exists already at \(location.text); refusing to overwrite it",
                hint: "use it as it is, or choose another prefix")
        }
    }

    func create(_ bytes: Data) throws {
        let revision = try connection().create(bytes)
        remember(RemoteSnapshot(bytes: bytes, revision: revision))
    }

    /// The current bytes: from the cluster, else (unreachable) from the cache.
    /// In a process that watches the location (the agent), from the cache:
    /// the watch brings it up to date as soon as anything changes.
    func bytes() throws -> Data {
        if RemoteLocations.isWatched(location), let cached = try? cache.read() { return cached.bytes }
        let connection: any RemoteSealedBytes
        do {
            connection = try self.connection()
        } catch {
            // No etcd client in this program (the launcher): the cache or nothing.
            if cache.exists { return try cache.read().bytes }
            throw error
        }
        let cached = cache.exists ? try? cache.read() : nil
        do {
            switch try connection.read(ifChangedSince: cached?.revision) {
            case .missing: throw notFound
            case .unchanged where cached != nil: return cached!.bytes
            case .unchanged: throw notFound  // not reached: unchanged needs a known revision
            case .current(let snapshot):
                remember(snapshot)
                return snapshot.bytes
            }
        } catch let error as VaultError where error.kind == .unavailable && cache.exists {
            let age = cache.modified().map { " last refreshed \(ChildEnvironment.rfc3339($0))" } ?? ""
            RemoteLocations.warnOnce("\(error.message); using this machine's cached copy of the vault\(age)")
            return try cache.read().bytes
        }
    }

    /// Asks the cluster now (never trusting a watch) and brings the cache up
    /// to date: whether it changed.
    func refresh() throws -> Bool {
        let cached = cache.exists ? try? cache.read() : nil
        switch try connection().read(ifChangedSince: cached?.revision) {
        case .missing: throw notFound
        case .unchanged: return false
        case .current(let snapshot):
            remember(snapshot)
            return true
        }
    }

    /// The bytes the cluster holds now, never the cache: 69 when no member
    /// answers (what `migrate` copies: a stale cached copy could bring back
    /// a removed key slot).
    func bytesFromCluster() throws -> Data {
        guard let snapshot = try connection().read() else { throw notFound }
        remember(snapshot)
        return snapshot.bytes
    }

    /// The cache when there is one, else the cluster.
    func bytesPreferringCache() throws -> Data {
        if cache.exists, let cached = try? cache.read() { return cached.bytes }
        return try bytes()
    }

    /// Fails as opening would, without a round trip when the cache has a copy.
    func checkAccess() throws {
        if cache.exists { return }
        _ = try bytes()
    }

    /// Keeps the cache equal to what the cluster holds; skips the write (and
    /// its fsync) when nothing changed. Bytes that are not a vault at all (a
    /// garbage chunk written under the prefix) never replace the cached copy:
    /// the read that found them still fails (65), and the good copy is still
    /// there for this machine's fresh tokens and for when the cluster is mended.
    func remember(_ snapshot: RemoteSnapshot) {
        guard (try? ParsedVault(parsing: snapshot.bytes, readSummary: false)) != nil else { return }
        if (try? cache.read())?.revision != snapshot.revision { cache.store(snapshot) }
    }

    /// `store` opens what is read (refusing a rolled-back vault) and remembers
    /// what is written. The lock, the read and the write block, so they run
    /// off the shared pool (`offThePool`); `change` (a call to Tallyfy) is async.
    func update<T>(with unlocker: VaultUnlocker, timeout: Duration, store: VaultStore, _ change: (UnlockedVault) async throws -> T)
        async throws -> T
    {
        let connection = try self.connection()
        let lock = try await offThePool { try connection.lock(timeout: timeout) }
        do {
            let result = try await update(connection, with: unlocker, store: store, change)
            _ = try? await offThePool { lock.release() }
            return result
        } catch {
            _ = try? await offThePool { lock.release() }
            throw error
        }
    }

    /// The part of `update` done under the lock.
    private func update<T>(_ connection: any RemoteSealedBytes, with unlocker: VaultUnlocker, store: VaultStore,
        _ change: (UnlockedVault) async throws -> T) async throws -> T
    {
        guard var read = try await offThePool({ try connection.read() }) else { throw notFound }
        // Read again from the cluster if this read looks rolled back (one
        // overtaken on a lossy link): the write is conditioned on the read
        // opened. (That second read, rare, blocks on the pool.)
        let vault = try store.opened(try ParsedVault(parsing: read.bytes, readSummary: false), with: unlocker) {
            guard let again = try connection.read() else { throw notFound }
            read = again
            return try ParsedVault(parsing: again.bytes, readSummary: false)
        }
        let snapshot = read
        remember(snapshot)
        let before = vault.modificationCount
        let result = try await change(vault)
        if vault.modificationCount != before {
            try store.sealing(vault)
            let bytes = try vault.sealed()
            let revision = try await offThePool { try connection.write(bytes, replacing: snapshot) }
            remember(RemoteSnapshot(bytes: bytes, revision: revision))
            vault.rememberKey(in: unlocker)
            try store.written(vault)
        }
        return result
    }
}

extension VaultStore {
    /// Whether the sealed bytes live somewhere other than a file (etcd).
    package var isRemote: Bool { remote != nil }

    /// The vault's location, parsed; throws for a refused one (a URL that is
    /// not etcd://, a malformed etcd location).
    package func location() throws -> VaultLocation {
        switch remote {
        case nil: .file(path)
        case .success(let remote): .etcd(remote.location)
        case .failure(let error): throw error
        }
    }

    /// For an etcd vault: reads it from the cluster now and brings this
    /// machine's cache up to date; whether anything had changed. What a watch
    /// on the vault's keys calls on every change. `false` for a file.
    @discardableResult
    package func refreshCache() throws -> Bool {
        guard let remote else { return false }
        return try remote.get().refresh()
    }

    /// The sealed bytes as stored, checked to be a vault but not decrypted:
    /// what `migrate` copies. For an etcd vault, read from the cluster, never
    /// from this machine's cache (69 when it cannot be reached).
    package func sealedBytes() throws -> Data {
        let bytes: Data
        if let remote {
            bytes = try remote.get().bytesFromCluster()
        } else {
            try FileSafety.requireSafeDirectory(directory)
            bytes = try FileSafety.readPrivate(path, what: "the vault")
        }
        _ = try ParsedVault(parsing: bytes)
        return bytes
    }

    /// Stores `bytes` (a sealed vault, checked by parsing) as a new vault;
    /// refuses to replace an existing one. Nothing is decrypted or written in
    /// the clear.
    package func create(sealedBytes bytes: Data) throws {
        _ = try ParsedVault(parsing: bytes)
        if let remote { return try remote.get().create(bytes) }
        try requireAbsent()
        try FileSafety.makeDirectory(directory)
        try FileSafety.requireSafeDirectory(directory)
        let lock = try FileLock(path: lockPath, timeout: lockTimeout)
        try FileSafety.atomicReplace(path, with: bytes, exclusive: true)
        withExtendedLifetime(lock) {}
    }
}

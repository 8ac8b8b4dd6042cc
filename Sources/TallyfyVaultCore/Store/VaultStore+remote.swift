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
    /// The program's etcd client; `nil` in the launcher (the cache or nothing).
    let connector: RemoteConnector?
    let watch = WatchState()

    /// `nil` for a file path; a refused location is kept as its error and
    /// thrown by the first operation (`VaultStore.init` cannot throw).
    static func parse(_ path: String, environment: [String: String], connector: RemoteConnector?) -> Result<RemoteVault, VaultError>? {
        do {
            switch try VaultLocation(parsing: path, environment: environment) {
            case .file: return nil
            case .etcd(let location):
                return .success(RemoteVault(location: location, cache: RemoteCache(location: location, environment: environment),
                    connector: connector))
            }
        } catch let error as VaultError {
            return .failure(error)
        } catch {
            return .failure(VaultError(.usage, "\(path.prefix(200)) is not a vault location"))
        }
    }

    func connection() throws -> any RemoteSealedBytes {
        guard let connector else {
            throw VaultError(.unavailable, "this program cannot reach etcd at \(location.text): it has no etcd client",
                hint: "use the full `tallyfy-vault` command, or `VaultStore(location:)` in a program that imports TallyfyVault")
        }
        return try connector(location)
    }

    var notFound: VaultError {
        VaultError(.notFound, "there is no vault at \(location.text)",
            hint: "create one with `tallyfy-vault --vault \(location.text) init`, or move one there with `tallyfy-vault migrate --to \(location.text)`")
    }

    func exists() async throws -> Bool { try await connection().read() != nil }

    func requireAbsent() async throws {
        if try await connection().read() != nil {
            throw VaultError(.usage, "a vault exists already at \(location.text); refusing to overwrite it",
                hint: "use it as it is, or choose another prefix")
        }
    }

    func create(_ bytes: Data) async throws {
        let revision = try await connection().create(bytes)
        await remember(RemoteSnapshot(bytes: bytes, revision: revision))
    }

    /// The current bytes: from the cluster, else (unreachable) from the cache.
    /// In a process whose watch keeps the cache current (the agent), from the
    /// cache: the watch brings it up to date as soon as anything changes.
    func bytes() async throws -> Data {
        if watch.isLive, let cached = try? cache.read() { return cached.bytes }
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
            switch try await connection.read(ifChangedSince: cached?.revision) {
            case .missing: throw notFound
            case .unchanged where cached != nil: return cached!.bytes
            case .unchanged: throw notFound  // not reached: unchanged needs a known revision
            case .current(let snapshot):
                await remember(snapshot)
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
    func refresh() async throws -> Bool {
        let cached = cache.exists ? try? cache.read() : nil
        switch try await connection().read(ifChangedSince: cached?.revision) {
        case .missing: throw notFound
        case .unchanged: return false
        case .current(let snapshot):
            await remember(snapshot)
            return true
        }
    }

    /// The bytes the cluster holds now, never the cache: 69 when no member
    /// answers (what `migrate` copies: a stale cached copy could bring back
    /// a removed key slot).
    func bytesFromCluster() async throws -> Data {
        guard let snapshot = try await connection().read() else { throw notFound }
        await remember(snapshot)
        return snapshot.bytes
    }

    /// This machine's cached copy, without asking the cluster: what a
    /// program without an etcd client (the launcher) can read.
    func cachedBytes() throws -> Data {
        guard cache.exists else {
            throw VaultError(.notFound, "this machine has no cached copy of the vault at \(location.text)",
                hint: "run any `tallyfy-vault` command on it once; the full command reads it from the cluster")
        }
        return try cache.read().bytes
    }

    /// The cache when there is one, else the cluster.
    func bytesPreferringCache() async throws -> Data {
        if cache.exists, let cached = try? cache.read() { return cached.bytes }
        return try await bytes()
    }

    /// Fails as opening would, without a round trip when the cache has a copy.
    func checkAccess() async throws {
        if cache.exists { return }
        _ = try await bytes()
    }

    /// Keeps the cache equal to what the cluster holds; skips the write (and
    /// its fsync) when nothing changed. Bytes that are not a vault at all (a
    /// garbage chunk written under the prefix) never replace the cached copy:
    /// the read that found them still fails (65), and the good copy is still
    /// there for this machine's fresh tokens and for when the cluster is mended.
    func remember(_ snapshot: RemoteSnapshot) async {
        guard (try? ParsedVault(parsing: snapshot.bytes, readSummary: false)) != nil else { return }
        if (try? cache.read())?.revision != snapshot.revision { await cache.store(snapshot) }
    }

    /// `store` opens what is read (refusing a rolled-back vault) and remembers
    /// what is written. Every request to the cluster suspends rather than
    /// blocks; `change` (a call to Tallyfy) is async too.
    func update<T>(with unlocker: VaultUnlocker, timeout: Duration, store: VaultStore, _ change: (UnlockedVault) async throws -> T)
        async throws -> T
    {
        let connection = try self.connection()
        let lock = try await connection.lock(timeout: timeout)
        do {
            let result = try await update(connection, with: unlocker, store: store, change)
            await lock.release()
            return result
        } catch {
            await lock.release()
            throw error
        }
    }

    /// The part of `update` done under the lock.
    private func update<T>(_ connection: any RemoteSealedBytes, with unlocker: VaultUnlocker, store: VaultStore,
        _ change: (UnlockedVault) async throws -> T) async throws -> T
    {
        guard var read = try await connection.read() else { throw notFound }
        // Read again from the cluster if this read looks rolled back (one
        // overtaken on a lossy link): the write is conditioned on the read
        // opened.
        let vault = try await store.opened(try ParsedVault(parsing: read.bytes, readSummary: false), with: unlocker) {
            guard let again = try await connection.read() else { throw notFound }
            read = again
            return try ParsedVault(parsing: again.bytes, readSummary: false)
        }
        let snapshot = read
        await remember(snapshot)
        let before = vault.modificationCount
        let result = try await change(vault)
        if vault.modificationCount != before {
            try store.sealing(vault)
            let bytes = try vault.sealed()
            let revision = try await connection.write(bytes, replacing: snapshot)
            await remember(RemoteSnapshot(bytes: bytes, revision: revision))
            vault.rememberKey(in: unlocker)
            try store.written(vault)
        }
        return result
    }
}

extension VaultStore {
    /// Called by a watch on an etcd vault when it is established (`true`:
    /// the cache has just been brought up to date) and when it is lost
    /// (`false`: reads ask etcd again until it is back). Every copy of this
    /// store sees it; no other store does.
    package func setWatchLive(_ live: Bool) { try? remote?.get().watch.set(live) }

    /// Whether a watch keeps this store's cache current.
    package var isWatchLive: Bool { (try? remote?.get().watch.isLive) ?? false }

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
    package func refreshCache() async throws -> Bool {
        guard let remote else { return false }
        return try await remote.get().refresh()
    }

    /// The sealed bytes as stored, checked to be a vault but not decrypted:
    /// what `migrate` copies. For an etcd vault, read from the cluster, never
    /// from this machine's cache (69 when it cannot be reached).
    package func sealedBytes() async throws -> Data {
        let bytes: Data
        if let remote {
            bytes = try await remote.get().bytesFromCluster()
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
    package func create(sealedBytes bytes: Data) async throws {
        _ = try ParsedVault(parsing: bytes)
        if let remote { return try await remote.get().create(bytes) }
        try await requireAbsent()
        try FileSafety.makeDirectory(directory)
        try FileSafety.requireSafeDirectory(directory)
        let lock = try await FileLock.acquire(path: lockPath, timeout: lockTimeout)
        try FileSafety.atomicReplace(path, with: bytes, exclusive: true)
        withExtendedLifetime(lock) {}
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#endif

/// The vault file on disk: where it is, how it is read without a lock, and
/// how it is changed under the lock with an atomic replace.
///
/// Readers never lock: a writer replaces the file by rename, so a reader sees
/// the old vault or the new one. Writers take an exclusive `flock` on
/// `VAULT.lock`, read the vault again under it (another process may have
/// changed it meanwhile), apply their change and replace the file. A failed
/// or refused change writes nothing: the file stays byte-for-byte as it was.
public struct VaultStore: Sendable {
    package let path: String
    /// How long a writer waits for another process's lock before giving up (75).
    package var lockTimeout: Duration

    /// Set when `path` names an etcd cluster (or a refused URL): then every
    /// operation goes to `VaultStore+remote.swift` and no file is touched.
    let remote: Result<RemoteVault, VaultError>?
    /// This machine's memory of the newest generation seen of each vault:
    /// every open is admitted by it, every write remembered.
    let generations: SeenGenerations?
    /// Where this store's opens and writes are recorded (`AuditTrail`).
    package var audit: AuditTrail

    public init(path: String, lockTimeout: Duration = VaultStore.defaultLockTimeout) {
        self.init(path: path, lockTimeout: lockTimeout, environment: ProcessInfo.processInfo.environment)
    }

    /// `environment` supplies `TALLYFY_VAULT_ETCD_*` and the cache folder
    /// when `path` is an etcd location, and where this machine remembers the
    /// generations it has seen (`XDG_STATE_HOME`, `HOME`). `remote` reaches
    /// an etcd location (`EtcdClient.connector`); without it an etcd vault is
    /// served from this machine's cache only.
    package init(path: String, lockTimeout: Duration = VaultStore.defaultLockTimeout, environment: [String: String],
        remote connector: RemoteConnector? = nil)
    {
        self.path = path
        self.lockTimeout = lockTimeout
        remote = RemoteVault.parse(path, environment: environment, connector: connector)
        generations = SeenGenerations(environment: environment)
        audit = AuditTrail(environment: environment)
    }

    /// The same vault at `target` (a symbolic link's resolved path).
    private init(resolving target: String, of store: VaultStore) {
        path = target
        lockTimeout = store.lockTimeout
        remote = store.remote
        generations = store.generations
        audit = store.audit
    }

    /// Every open of this store's vault: decrypt, then refuse a vault older
    /// than one this machine has seen (65, `SeenGenerations`).
    /// Records a wrong key and a refused or accepted rollback (`AuditTrail`).
    ///
    /// A read can be overtaken: while one process read the vault (from an
    /// etcd member whose answer a lossy link held up for seconds, from this
    /// machine's cache, or simply on a busy machine), another one wrote or
    /// saw a newer generation and remembered it. That read is older than the
    /// remembered generation but was current when it was made, so before
    /// refusing, the vault is read again (`readAgain`: the store's own read,
    /// the cluster for etcd) and refused only if that read is older too. Found by tools/partition-test: `users token` ended 65,
    /// "generation 383 < 389", on a machine whose link from one member lost
    /// 80 % of its packets.
    func opened(_ parsed: ParsedVault, with unlocker: VaultUnlocker, readAgain: () async throws -> ParsedVault) async throws
        -> UnlockedVault
    {
        if let vault = try openedOnce(parsed, with: unlocker, lastTry: false) { return vault }
        return try openedOnce(try await readAgain(), with: unlocker, lastTry: true)!
    }

    /// `opened(_:with:readAgain:)` for a caller that is not async (the
    /// launcher): the read again is of the file, or of this machine's cache
    /// of an etcd vault (every process of this machine that saw a newer
    /// generation stored it there first).
    func openedLocally(_ parsed: ParsedVault, with unlocker: VaultUnlocker) throws -> UnlockedVault {
        if let vault = try openedOnce(parsed, with: unlocker, lastTry: false) { return vault }
        return try openedOnce(try parsedLocally(readSummary: false), with: unlocker, lastTry: true)!
    }

    /// The vault opened and admitted; `nil` when it looks rolled back and
    /// this is not the `lastTry` (then it is read again and tried once more).
    private func openedOnce(_ parsed: ParsedVault, with unlocker: VaultUnlocker, lastTry: Bool) throws -> UnlockedVault? {
        let vault: UnlockedVault
        do {
            vault = try UnlockedVault.open(parsed, with: unlocker)
        } catch let error as VaultError where error.cause == .keyOpensNoSlot {
            audit.refusedUnlock(location: locationText, error)
            throw error
        }
        AuditTrail.learn(vault, profile: audit.profile)
        audit.remember(location: locationText, id: vault.content.id)
        do {
            if try generations?.admit(vault, location: locationText) == true {
                try audit.record(AuditTrail.Entry(event: "rollback-accepted", profile: audit.profile), key: vault.auditKey,
                    vaultID: vault.content.id)
            }
        } catch let error as VaultError where error.cause == .rolledBack {
            guard lastTry else { return nil }
            if AuditTrail.recordsRefusals {
                try? audit.record(AuditTrail.Entry(event: "rollback-refused", profile: audit.profile, result: AuditTrail.result(error)),
                    key: vault.auditKey, vaultID: vault.content.id)
            }
            throw error
        }
        return vault
    }

    /// The location as messages and the audit trail name it.
    package var locationText: String { remote == nil ? path : ((try? remote!.get().location.text) ?? path) }

    /// Just before `vault` is sealed for a write: the audit log's head goes in with it.
    func sealing(_ vault: UnlockedVault) throws {
        try audit.sealHead(into: vault)
    }

    /// After a write of `vault`: remembered, and recorded.
    func written(_ vault: UnlockedVault) throws {
        generations?.remember(vault)
        AuditTrail.learn(vault, profile: audit.profile)
        try audit.recordChange(vault)
    }

    public static let defaultLockTimeout: Duration = .seconds(10)

    /// `TALLYFY_VAULT_LOCK_TIMEOUT`: seconds (fractions allowed, 0 = fail at
    /// once) a writer waits for the lock; the default when unset or not a
    /// non-negative number.
    package static func lockTimeout(environment: [String: String]) -> Duration {
        guard let text = environment["TALLYFY_VAULT_LOCK_TIMEOUT"], let seconds = Double(text),
            seconds.isFinite, seconds >= 0, seconds <= 86_400
        else { return defaultLockTimeout }
        return .milliseconds(Int64((seconds * 1000).rounded()))
    }

    /// `$XDG_DATA_HOME/tallyfy-vault/vault`, or `~/.local/share/tallyfy-vault/vault`.
    public static func defaultPath(environment: [String: String]) -> String {
        if let data = environment["XDG_DATA_HOME"], data.hasPrefix("/") {
            return data + "/tallyfy-vault/vault"
        }
        // With no home at all, a path that names the problem when it is not found.
        return (HomeFolder.path(environment: environment) ?? "") + "/.local/share/tallyfy-vault/vault"
    }

    var lockPath: String { path + ".lock" }
    var directory: String { URL(fileURLWithPath: path).deletingLastPathComponent().path }

    package func exists() async -> Bool {
        if let remote { return (try? await remote.get().exists()) ?? false }
        return FileManager.default.fileExists(atPath: path)
    }

    /// Creates a new vault file; refuses to replace an existing one.
    package func create(_ vault: UnlockedVault) async throws {
        if let remote {
            try sealing(vault)
            try await remote.get().create(try vault.sealed())
            audit.remember(location: locationText, id: vault.content.id, replacing: true)
            return try written(vault)
        }
        try await requireAbsent()
        try FileSafety.makeDirectory(directory)
        try FileSafety.requireSafeDirectory(directory)
        let lock = try await FileLock.acquire(path: lockPath, timeout: lockTimeout)
        try sealing(vault)
        try FileSafety.atomicReplace(path, with: try vault.sealed(), exclusive: true)
        withExtendedLifetime(lock) {}
        audit.remember(location: locationText, id: vault.content.id, replacing: true)
        try written(vault)
    }

    /// Refuses when a vault is already at `path`: `init` never overwrites.
    package func requireAbsent() async throws {
        if let remote { return try await remote.get().requireAbsent() }
        if await exists() {
            throw VaultError(.usage, "a vault exists already at \(path); refusing to overwrite it",
                hint: "use it as it is, choose another --vault path, or move the old file away first")
        }
    }

    /// The file split into its parts, nothing decrypted; refuses a vault that
    /// other users can read.
    func parsed(readSummary: Bool = true) async throws -> ParsedVault {
        if let remote { return try ParsedVault(parsing: try await remote.get().bytes(), readSummary: readSummary) }
        return try parsedLocally(readSummary: readSummary)
    }

    /// `parsed` without the network: the file, or this machine's cached copy
    /// of an etcd vault (the only copy a program without an etcd client, the
    /// launcher, can read).
    func parsedLocally(readSummary: Bool = true) throws -> ParsedVault {
        if let remote { return try ParsedVault(parsing: try remote.get().cachedBytes(), readSummary: readSummary) }
        try FileSafety.requireSafeDirectory(directory)
        return try ParsedVault(parsing: try FileSafety.readPrivate(path, what: "the vault"), readSummary: readSummary)
    }

    /// Fails as opening would (missing, unreadable, other users' access)
    /// without reading the file, so no one is prompted for a passphrase to
    /// open a vault that isn't there.
    package func checkAccess() async throws {
        if let remote { return try await remote.get().checkAccess() }
        try FileSafety.requireSafeDirectory(directory)
        close(try FileSafety.openPrivate(path, what: "the vault").descriptor)
    }

    /// The unlock slots as the clear header lists them, readable with no key.
    package func slots() async throws -> [SlotInfo] {
        try await parsed().slots.map(SlotInfo.init)
    }

    /// The generation this machine remembers for the vault named `id`
    /// (`SeenGenerations`); `nil` when there is no place to remember it.
    package func rememberedGeneration(of id: String) -> UInt64? {
        generations?.remembered(id)
    }

    /// The clear-text summary, readable with no key (for `check`).
    package func summary() async throws -> VaultSummary {
        try await parsed().summary
    }

    /// The vault as stored, read once and not yet unlocked: what one command
    /// decides on (`TokenBroker.open(_:)`). For an etcd vault, from this
    /// machine's cache when it has a copy (a renewal re-reads from the
    /// cluster under the fleet-wide lock). Reading comes first, so a missing,
    /// unsafe or damaged vault is reported before anyone is prompted for a
    /// passphrase, with one `open` of the file.
    /// `cached: false` asks an etcd vault's cluster first (its cache only
    /// when the cluster is unreachable), for reports on the fleet's state.
    package func read(withSummary: Bool = false, cached: Bool = true) async throws -> VaultRead {
        if let remote {
            let location = try remote.get()
            let bytes = cached ? try await location.bytesPreferringCache() : try await location.bytes()
            return VaultRead(parsed: try ParsedVault(parsing: bytes, readSummary: withSummary))
        }
        return VaultRead(parsed: try parsedLocally(readSummary: withSummary))
    }

    /// `read` without the network, for a program that is not async and has
    /// no etcd client (the launcher): the file, or this machine's cached
    /// copy of an etcd vault (none: 66, and the launcher hands over).
    package func readLocally(withSummary: Bool = false) throws -> VaultRead {
        VaultRead(parsed: try parsedLocally(readSummary: withSummary))
    }

    /// Opens the vault for reading, without a lock.
    package func open(with unlocker: VaultUnlocker) async throws -> UnlockedVault {
        try await opened(try parsed(readSummary: false), with: unlocker) { try await parsed(readSummary: false) }
    }

    /// Opens the vault for reading with `secrets`, remembering nothing.
    package func open(with secrets: [UnlockSecret]) async throws -> UnlockedVault {
        try await open(with: VaultUnlocker(secrets: secrets))
    }

    /// Changes the vault under the lock: re-reads and opens it, runs `change`,
    /// and replaces the file only when `change` returns without throwing and
    /// modified something. A change may talk to Tallyfy while holding the
    /// lock: that is what makes refreshes single-flight.
    ///
    /// A vault path that is a symbolic link is resolved once: the lock, the
    /// read and the replace all happen at the link's target, so the link
    /// stays and every path to the vault sees the change (SECURITY.md, "On
    /// disk"). A vault that belongs to another user is refused before any
    /// change is attempted.
    package func update<T>(with unlocker: VaultUnlocker, _ change: (UnlockedVault) async throws -> T) async throws -> T {
        if let remote { return try await remote.get().update(with: unlocker, timeout: lockTimeout, store: self, change) }
        let (store, mode) = try writeTarget()
        let lock = try await FileLock.acquire(path: store.lockPath, timeout: lockTimeout)
        defer { withExtendedLifetime(lock) {} }
        let vault = try await store.open(with: unlocker)
        let before = vault.modificationCount
        let result = try await change(vault)
        if vault.modificationCount != before { try store.write(vault, mode: mode, unlocker: unlocker) }
        return result
    }

    package func update<T>(with secrets: [UnlockSecret], _ change: (UnlockedVault) async throws -> T) async throws -> T {
        try await update(with: VaultUnlocker(secrets: secrets), change)
    }

    /// The store a write goes to (the link's target for a symbolic link) and
    /// the mode the replaced file keeps; its folder checked before the lock
    /// file is created in it.
    private func writeTarget() throws -> (store: VaultStore, mode: mode_t) {
        try FileSafety.requireSafeDirectory(directory)
        let (target, mode) = try FileSafety.writeTarget(path)
        let store = VaultStore(resolving: target, of: self)
        if target != path { try FileSafety.requireSafeDirectory(store.directory) }
        return (store, mode)
    }

    private func write(_ vault: UnlockedVault, mode: mode_t, unlocker: VaultUnlocker) throws {
        try sealing(vault)
        let bytes = try vault.sealed()  // refuses, before touching the disk, what a reader would refuse
        FileSafety.removeTemporaries(of: path)
        try FileSafety.atomicReplace(path, with: bytes, mode: mode)
        vault.rememberKey(in: unlocker)
        try written(vault)
    }
}

/// One read of a vault's sealed bytes, parsed but not decrypted
/// (`VaultStore.read`): a command reads once and decides on what it read.
package struct VaultRead: Sendable {
    let parsed: ParsedVault

    /// The clear summary, when read `withSummary` (else empty). Not
    /// authenticated until the vault is opened: it may decide where work
    /// happens, never which token is handed out.
    package var summary: VaultSummary { parsed.summary }

    /// The unlock slots as the clear header lists them.
    package var slots: [SlotInfo] { parsed.slots.map(SlotInfo.init) }
}

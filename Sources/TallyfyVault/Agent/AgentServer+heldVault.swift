import Foundation
import Synchronization
import TallyfyVaultCore

/// The held vault: the one the agent last opened with its key, kept while
/// its file is unchanged, and forgotten with the key.
extension AgentServer {
    /// Forgets the key and keeps answering "locked".
    package func lock(reason: String) {
        let wasUnlocked = state.withLock { state -> Bool in
            defer { state.unlocker = nil }
            return state.unlocker != nil
        }
        dropHeldVault()
        AuditTrail.forget()
        if wasUnlocked { log("forgot the key: \(reason)") }
    }

    /// Drops the held vault (and the data key in it) unless a request is
    /// reading it right now; that request, or the next tick, drops it once
    /// it finds no key.
    func dropHeldVault() {
        _ = held.withLockIfAvailable { $0 = nil }
    }

    /// Runs `body` on the held vault while it is current (one `stat` of its
    /// file, `VaultStore.isCurrent`), on the calling thread: what a serving
    /// thread answers from. `.stale` when it must be opened again
    /// (`withHeldVault`), `.noKey` when the agent holds none.
    func withCurrentHeldVault<T>(_ body: (UnlockedVault, VaultUnlocker) -> T) -> HeldVault<T> {
        guard let unlocker = state.withLock({ $0.unlocker }) else {
            dropHeldVault()
            return .noKey
        }
        return held.withLock { pinned -> HeldVault<T> in
            guard let current = pinned, store.isCurrent(current) else {
                pinned = nil  // its data key is not kept past its use
                return .stale
            }
            return .done(body(current.vault, unlocker))
        }
    }

    enum HeldVault<T> { case done(T), stale, noKey }

    /// Runs `body` on the vault as it is stored now: the held one while it
    /// is current, else the vault opened again with the held key
    /// (`VaultStore.openPinned`: for etcd, this machine's cache while the
    /// watch keeps it current, else the cluster). `nil` when no key is held
    /// or the vault cannot be opened now (being replaced, say: the client
    /// falls back); the key is forgotten only when it no longer opens the vault.
    ///
    /// The vault is opened outside the lock on the held one, since a read
    /// from the cluster may be a network away: requests that come while it
    /// is read are not queued behind it.
    func withHeldVault<T>(_ body: (UnlockedVault, VaultUnlocker) -> T) async -> T? {
        switch withCurrentHeldVault(body) {
        case .done(let value): return value
        case .noKey: return nil
        case .stale: break
        }
        guard let unlocker = state.withLock({ $0.unlocker }) else { return nil }
        let opened: PinnedVault
        do {
            opened = try await store.openPinned(with: unlocker)
        } catch let error as VaultError where error.cause == .keyOpensNoSlot {
            // Only this: etcd refusing a certificate or a user (77 too) is the
            // cluster's business, and the key still opens the vault.
            lock(reason: "the vault's key slots changed")
            return nil
        } catch {
            return nil
        }
        // Answers need tokens, never the client secret (a renewal opens the
        // vault afresh), so the held copy keeps none.
        opened.vault.forgetClientSecrets()
        return held.withLock { pinned -> T? in
            // Locked meanwhile: nothing is held, nothing handed out.
            guard state.withLock({ $0.unlocker }) != nil else {
                pinned = nil
                return nil
            }
            pinned = opened
            return body(opened.vault, unlocker)
        }
    }
}

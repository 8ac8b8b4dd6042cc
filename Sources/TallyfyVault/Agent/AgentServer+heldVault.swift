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

    /// Drops the held vault (and the data key in it), once the request
    /// deciding on it, if any, is done: that is quick, since the vault is
    /// opened outside this lock (`openHeldVault`).
    func dropHeldVault() {
        held.withLock { $0 = nil }
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
    /// (`openHeldVault`). `nil` when no key is held or the vault cannot be
    /// opened now (being replaced, say: the client falls back).
    func withHeldVault<T>(_ body: (UnlockedVault, VaultUnlocker) -> T) async -> T? {
        switch withCurrentHeldVault(body) {
        case .done(let value): return value
        case .noKey: return nil
        case .stale: break
        }
        guard let opened = await openHeldVault() else { return nil }
        return held.withLock { _ -> T? in
            // Locked meanwhile: nothing handed out.
            guard let unlocker = state.withLock({ $0.unlocker }) else { return nil }
            return body(opened.vault, unlocker)
        }
    }

    /// Opens the vault with the held key (`VaultStore.openPinned`: for etcd,
    /// this machine's cache while the watch keeps it current, else the
    /// cluster) and holds it, unless the agent was locked meanwhile. One
    /// opening at a time, shared by every request that waits for it; outside
    /// the lock on the held vault, so the requests it can answer are not
    /// held up. The key is forgotten only when it no longer opens the vault.
    private func openHeldVault() async -> PinnedVault? {
        let task = opening.withLock { opening -> Task<PinnedVault?, Never>? in
            if let opening { return opening }
            guard let unlocker = state.withLock({ $0.unlocker }) else { return nil }
            let started = Task { [self] () -> PinnedVault? in
                defer { self.opening.withLock { $0 = nil } }
                do {
                    let opened = try await store.openPinned(with: unlocker)
                    // Answers need tokens, never the client secret (a renewal
                    // opens the vault afresh), so the held copy keeps none.
                    opened.vault.forgetClientSecrets()
                    return held.withLock { pinned -> PinnedVault? in
                        guard state.withLock({ $0.unlocker }) != nil else { return nil }
                        pinned = opened
                        return opened
                    }
                } catch let error as VaultError where error.cause == .keyOpensNoSlot {
                    // Only this: etcd refusing a certificate or a user (77 too)
                    // is the cluster's business, and the key still opens the vault.
                    lock(reason: "the vault's key slots changed")
                    return nil
                } catch {
                    return nil
                }
            }
            opening = started
            return started
        }
        return await task?.value
    }
}

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

    /// Runs `body` on the vault as it is on disk now: the held one while its
    /// file is unchanged (one `stat`), else the file opened again with the
    /// held key. `nil` when no key is held or the vault cannot be opened now
    /// (being replaced, say: the client falls back); the key is forgotten
    /// when it no longer opens the vault.
    func withHeldVault<T>(_ body: (UnlockedVault, VaultUnlocker) -> T) -> T? {
        if store.isRemote { return withRemoteVault(body) }
        let outcome = held.withLock { pinned -> HeldVault<T> in
            guard let unlocker = state.withLock({ $0.unlocker }) else {
                pinned = nil
                return .noKey
            }
            if let current = pinned, store.isCurrent(current) {
                return .done(body(current.vault, unlocker))
            }
            pinned = nil
            do {
                let opened = try store.openPinned(with: unlocker)
                // Answers need tokens, never the client secret (a renewal
                // opens the vault afresh), so the held copy keeps none.
                opened.vault.forgetClientSecrets()
                pinned = opened
                return .done(body(opened.vault, unlocker))
            } catch let error as VaultError where error.cause == .keyOpensNoSlot {
                return .slotsChanged
            } catch {
                return .unreadable
            }
        }
        switch outcome {
        case .done(let value): return value
        case .noKey, .unreadable: return nil
        case .slotsChanged:
            lock(reason: "the vault's key slots changed")
            return nil
        }
    }

    private enum HeldVault<T> { case done(T), noKey, slotsChanged, unreadable }

    /// A vault in etcd has no file to watch: it is read for every call (from
    /// this machine's cache while `VaultWatch` keeps it current, else from the
    /// cluster), and outside the state lock, since the cluster may be a network away.
    private func withRemoteVault<T>(_ body: (UnlockedVault, VaultUnlocker) -> T) -> T? {
        guard let unlocker = state.withLock({ $0.unlocker }) else { return nil }
        do {
            return body(try store.open(with: unlocker), unlocker)
        } catch let error as VaultError where error.cause == .keyOpensNoSlot {
            // Only this: etcd refusing a certificate or a user (77 too) is the
            // cluster's business, and the key still opens the vault.
            lock(reason: "the vault's key slots changed")
            return nil
        } catch {
            return nil
        }
    }
}

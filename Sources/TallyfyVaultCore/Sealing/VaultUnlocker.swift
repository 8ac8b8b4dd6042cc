#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
import Synchronization

/// The secrets that may open a vault, and the data key once one of them has.
///
/// Unwrapping a passphrase slot costs an Argon2id derivation (about half a
/// second at the default cost), and a refreshing `exec` opens the vault more
/// than once: to look, then again under the lock. One unlocker per process
/// makes that one derivation: after the first open it remembers the data key
/// with the exact slots it came from, and opens any later read of the same
/// vault with that key. When the slots differ (a concurrent `rekey` or
/// `keys add`), the key may have changed, so the secrets are tried again.
package final class VaultUnlocker: Sendable {
    package let secrets: [UnlockSecret]
    private let remembered = Mutex<(slots: [KeySlot], key: SecretBox)?>(nil)

    package init(secrets: [UnlockSecret]) {
        self.secrets = secrets
    }

    /// The data key for a vault with `slots`: the remembered one when the
    /// slots are unchanged, else unwrapped by the first secret that opens a
    /// slot. `nil` when none does.
    func dataKey(for slots: [KeySlot]) throws -> SecretBox? {
        if let known = remembered.withLock({ $0 }), known.slots == slots { return known.key }
        for secret in secrets {
            for slot in slots where slot.accepts(secret) {
                if let key = try slot.unwrap(with: secret) {
                    let box = SecretBox(key)
                    remember(slots: slots, key: box)
                    return box
                }
            }
        }
        return nil
    }

    /// An unlocker that holds only the data key this one found, and none of
    /// the secrets: what the agent keeps. It opens the vault while its slots
    /// stay as they were; after any slot change it opens nothing (the agent
    /// then forgets the key and clients unlock for themselves).
    package func keepingOnlyTheDataKey() -> VaultUnlocker? {
        guard let known = remembered.withLock({ $0 }) else { return nil }
        let unlocker = VaultUnlocker(secrets: [])
        unlocker.remember(slots: known.slots, key: known.key)
        return unlocker
    }

    /// An unlocker for `store` from a bare data key (the detached agent gets
    /// its key this way from the process that unlocked); refused unless the
    /// key opens the vault as it is now.
    package static func withDataKey(_ key: consuming SecretBytes, for store: VaultStore) async throws -> VaultUnlocker {
        let parsed = try await store.parsed(readSummary: false)
        let unlocker = VaultUnlocker(secrets: [])
        unlocker.remember(slots: parsed.slots, key: SecretBox(key))
        _ = try UnlockedVault.open(parsed, with: unlocker)
        return unlocker
    }

    /// Hands the remembered data key to `body` (to pass it to a detached
    /// agent through a pipe); `nil` before anything was opened.
    package func withDataKeyBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R? {
        guard let known = remembered.withLock({ $0 }) else { return nil }
        return try known.key.bytes.withUnsafeBytes(body)
    }

    /// Called after this process wrote new slots (`rekey`, `keys add`), so
    /// that reading its own write costs no derivation either.
    func remember(slots: [KeySlot], key: SecretBox) {
        remembered.withLock { $0 = (slots, key) }
    }
}

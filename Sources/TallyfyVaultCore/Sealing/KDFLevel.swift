import CSodium
#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The Argon2id cost of a passphrase slot, as libsodium names its presets.
package enum KDFLevel: String, Sendable, CaseIterable {
    /// 2 passes, 64 MiB: for passphrases typed often on small machines.
    case interactive
    /// 3 passes, 256 MiB: the default.
    case moderate
    /// 4 passes, 1 GiB: for vaults opened rarely.
    case sensitive

    /// Argon2id parameters `(opsLimit, memLimit)` in libsodium's units.
    package var parameters: (opsLimit: UInt64, memLimit: UInt64) {
        #if TALLYFY_TEST_HOOKS
            // Debug builds only (the test suite): a cheap cost so hundreds of
            // vaults can be made in a test run. Release builds ignore this.
            if ProcessInfo.processInfo.environment["TALLYFY_VAULT_TEST_KDF"] == "fast" {
                return (UInt64(crypto_pwhash_argon2id_OPSLIMIT_MIN), UInt64(crypto_pwhash_argon2id_MEMLIMIT_MIN))
            }
        #endif
        switch self {
        case .interactive:
            return (UInt64(crypto_pwhash_OPSLIMIT_INTERACTIVE), UInt64(crypto_pwhash_MEMLIMIT_INTERACTIVE))
        case .moderate:
            return (UInt64(crypto_pwhash_OPSLIMIT_MODERATE), UInt64(crypto_pwhash_MEMLIMIT_MODERATE))
        case .sensitive:
            return (UInt64(crypto_pwhash_OPSLIMIT_SENSITIVE), UInt64(crypto_pwhash_MEMLIMIT_SENSITIVE))
        }
    }

    /// Below libsodium's `interactive` preset in passes or memory (the
    /// constants themselves, never the test hook's cheaper cost).
    static func isWeak(opsLimit: UInt64, memLimit: UInt64) -> Bool {
        opsLimit < UInt64(crypto_pwhash_OPSLIMIT_INTERACTIVE) || memLimit < UInt64(crypto_pwhash_MEMLIMIT_INTERACTIVE)
    }

    /// The most a vault file may ask for. A hostile file asking for more is
    /// refused as corrupt instead of making us allocate gigabytes.
    static let maxOpsLimit: UInt64 = 16
    static let maxMemLimit: UInt64 = UInt64(crypto_pwhash_MEMLIMIT_SENSITIVE)  // 1 GiB
    static let minOpsLimit: UInt64 = UInt64(crypto_pwhash_argon2id_OPSLIMIT_MIN)
    static let minMemLimit: UInt64 = UInt64(crypto_pwhash_argon2id_MEMLIMIT_MIN)
}

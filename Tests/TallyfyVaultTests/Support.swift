import Foundation
@testable import TallyfyVault
@testable import TallyfyVaultCore

/// Secrets for unit tests, and the cheap Argon2id cost (debug builds only).
enum TestKeys {
    static let cheapKDF: Void = { setenv("TALLYFY_VAULT_TEST_KDF", "fast", 1) }()

    static func keyFile(_ fill: UInt8) -> UnlockSecret {
        UnlockSecret(kind: .keyFile, bytes: SecretBytes(copying: [UInt8](repeating: fill, count: 32)), origin: "test key \(fill)")
    }

    static func passphrase(_ text: String) -> UnlockSecret {
        _ = cheapKDF
        return UnlockSecret(kind: .passphrase, bytes: SecretBytes(copying: Array(text.utf8)), origin: "test passphrase")
    }

    static func profile(secret: String = "s3cret-value", appToken: SealedToken? = nil) -> Profile {
        Profile(orgID: "org-1", clientID: "client-1", clientSecret: secret, tokenURL: "http://127.0.0.1:1/oauth/token",
            apiURL: "http://127.0.0.1:1/api", secretSetAt: Date(timeIntervalSince1970: 1_700_000_000), applicationToken: appToken)
    }

    static func token(_ value: String, expires: TimeInterval = 1_800_000_000) -> SealedToken {
        SealedToken(value: value, expiresAt: Date(timeIntervalSince1970: expires), obtainedAt: Date(timeIntervalSince1970: 1_700_000_000))
    }
}

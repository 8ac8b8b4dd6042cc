import Synchronization

/// Something that can open a key slot: a key file's 32 bytes, a passphrase,
/// or a PKCS#11 token's PIN with the token it unlocks.
///
/// A class rather than a `~Copyable` struct so that several sources can be
/// collected in an array; the bytes themselves stay in guarded memory with a
/// single owner and are wiped when the last reference goes.
public final class UnlockSecret: @unchecked Sendable {
    package let kind: SlotKind
    package let bytes: SecretBytes
    /// Where it came from, for messages ("key file /etc/…", "TALLYFY_VAULT_PASSPHRASE").
    package let origin: String
    /// What the secret works with besides its bytes, for a kind that needs
    /// more than bytes: a PKCS#11 secret's `Pkcs11Token` (its bytes are the PIN).
    package let device: (any Sendable)?

    package init(kind: SlotKind, bytes: consuming SecretBytes, origin: String, device: (any Sendable)? = nil) {
        self.kind = kind
        self.bytes = bytes
        self.origin = origin
        self.device = device
    }

    /// What a passphrase slot's key is derived from besides the passphrase.
    struct Derivation: Hashable {
        var salt: [UInt8]
        var opsLimit: UInt64
        var memLimit: UInt64
    }

    /// The slot keys already derived from this passphrase (right or wrong):
    /// a passphrase checked when it is typed (`CommandContext`) costs one
    /// Argon2id derivation per try, and opening the vault with it then costs
    /// none more.
    private let derived = Mutex<[Derivation: SecretBox]>([:])

    func derivedKey(_ input: Derivation) -> SecretBytes? {
        guard let box = derived.withLock({ $0[input] }) else { return nil }
        return box.bytes.withUnsafeBytes { SecretBytes(copying: $0) }
    }

    func remember(_ key: borrowing SecretBytes, for input: Derivation) {
        let box = SecretBox(key.withUnsafeBytes { SecretBytes(copying: $0) })
        derived.withLock { $0[input] = box }
    }

    /// The length of a key file, and of the random bytes `keygen` writes.
    package static let keyFileLength = 32
}

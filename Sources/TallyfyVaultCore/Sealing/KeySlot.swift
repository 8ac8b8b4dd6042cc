#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// One way to open the vault: the data key wrapped under a slot key that
/// the slot's kind makes and finds again (`SlotKind.method`): derived from a
/// passphrase (Argon2id) or a key file (keyed BLAKE2b), or decrypted by a
/// PKCS#11 token.
///
/// Several slots wrap the same data key, as LUKS does, so one vault can be
/// opened by an operator's passphrase and by a server's key file alike.
struct KeySlot: Sendable, Equatable {
    static let saltLength = 16
    static let wrappedKeyLength = 32 + 16

    var kind: SlotKind
    var label: String
    var salt: [UInt8]
    /// The kind's own bytes, between the salt and the nonce in the file
    /// (Argon2id cost, or a token's wrapped slot key); empty for key files.
    var parameters: [UInt8]
    var nonce: [UInt8]
    var wrappedKey: [UInt8]

    /// Associated data binding a wrapped key to its slot's kind and salt.
    private var associatedData: [UInt8] {
        Array("TFYVAULT-slot-v1".utf8) + [kind.rawValue] + salt
    }

    /// A new slot that wraps `dataKey` under `secret`.
    static func make(
        wrapping dataKey: borrowing SecretBytes, with secret: UnlockSecret, label: String, kdf: KDFLevel
    ) throws -> KeySlot {
        let salt = Sodium.randomBytes(saltLength)
        let (parameters, slotKey) = try secret.kind.method.newSlotKey(for: secret, salt: salt, kdf: kdf)
        var slot = KeySlot(
            kind: secret.kind, label: label, salt: salt, parameters: parameters,
            nonce: Sodium.randomBytes(Sodium.aeadNonceBytes), wrappedKey: [])
        slot.wrappedKey = dataKey.withUnsafeBytes { Sodium.seal($0, key: slotKey.bytes, nonce: slot.nonce, associatedData: slot.associatedData) }
        return slot
    }

    /// Whether `secret` is the kind of thing this slot takes.
    func accepts(_ secret: UnlockSecret) -> Bool {
        kind == secret.kind
    }

    /// The data key, or `nil` when `secret` does not open this slot.
    func unwrap(with secret: UnlockSecret) throws -> SecretBytes? {
        guard accepts(secret), let slotKey = try kind.method.slotKey(self, with: secret) else { return nil }
        guard let key = Sodium.open(wrappedKey, key: slotKey, nonce: nonce, associatedData: associatedData),
            key.count == Sodium.aeadKeyBytes
        else { return nil }
        return key
    }

    /// The Argon2id cost of a passphrase slot (zero for other kinds).
    var opsLimit: UInt64 { PassphraseSlot.cost(self).opsLimit }
    var memLimit: UInt64 { PassphraseSlot.cost(self).memLimit }
}

extension KeySlot {
    /// Debug builds only: appends one line per slot key derivation to the file
    /// named by `TALLYFY_VAULT_TEST_KDF_LOG`, so tests can prove a command
    /// derives the key once (or never, where it should not unlock at all).
    static func countDerivation(_ kind: SlotKind) {
        #if TALLYFY_TEST_HOOKS
            guard let path = ProcessInfo.processInfo.environment["TALLYFY_VAULT_TEST_KDF_LOG"], !path.isEmpty else { return }
            let descriptor = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else { return }
            let line = kind == .passphrase ? "argon2id\n" : "\(kind.name)\n"
            _ = line.withCString { Glibc.write(descriptor, $0, strlen($0)) }
            Glibc.close(descriptor)
        #endif
    }
}

/// What may be shown about an unlock slot: never key material.
package struct SlotInfo: Sendable, Equatable, Codable {
    package var label: String
    package var kind: SlotKind
    /// Argon2id cost of a passphrase slot.
    package var opsLimit: UInt64?
    package var memLimitBytes: UInt64?
    /// A passphrase slot whose Argon2id cost is below libsodium's
    /// `interactive` preset (2 passes, 64 MiB): guessing its passphrase is
    /// cheap. Only a debug build writes one; `keys list` and `status` flag it.
    package var weak: Bool
    /// A PKCS#11 slot's token label and serial number, and its key's
    /// CKA_ID in hex, as they were when the slot was added.
    package var token: String?
    package var tokenSerial: String?
    package var keyID: String?

    init(_ slot: KeySlot) {
        label = slot.label
        kind = slot.kind
        weak = false
        slot.kind.method.describe(slot, into: &self)
    }
}

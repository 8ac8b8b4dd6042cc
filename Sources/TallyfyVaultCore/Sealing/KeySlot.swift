#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// One way to open the vault: the data key wrapped under a key derived from
/// a passphrase (Argon2id) or from a key file (keyed BLAKE2b).
///
/// Several slots wrap the same data key, as LUKS does, so one vault can be
/// opened by an operator's passphrase and by a server's key file alike.
struct KeySlot: Sendable, Equatable {
    static let saltLength = 16
    static let wrappedKeyLength = 32 + 16

    var kind: SlotKind
    var label: String
    var salt: [UInt8]
    /// Argon2id cost; zero for key-file slots.
    var opsLimit: UInt64
    var memLimit: UInt64
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
        let kind = secret.kind
        let (ops, mem): (UInt64, UInt64) = kind == .passphrase ? kdf.parameters : (0, 0)
        var slot = KeySlot(
            kind: kind, label: label, salt: Sodium.randomBytes(saltLength), opsLimit: ops, memLimit: mem,
            nonce: Sodium.randomBytes(Sodium.aeadNonceBytes), wrappedKey: [])
        let slotKey = try slot.deriveKey(from: secret)
        slot.wrappedKey = dataKey.withUnsafeBytes { Sodium.seal($0, key: slotKey, nonce: slot.nonce, associatedData: slot.associatedData) }
        return slot
    }

    /// Whether `secret` is the kind of thing this slot takes.
    func accepts(_ secret: UnlockSecret) -> Bool {
        kind == secret.kind
    }

    /// The data key, or `nil` when `secret` does not open this slot.
    func unwrap(with secret: UnlockSecret) throws -> SecretBytes? {
        guard accepts(secret) else { return nil }
        let slotKey = try deriveKey(from: secret)
        guard let key = Sodium.open(wrappedKey, key: slotKey, nonce: nonce, associatedData: associatedData),
            key.count == Sodium.aeadKeyBytes
        else { return nil }
        return key
    }

    private func deriveKey(from secret: UnlockSecret) throws -> SecretBytes {
        let input = UnlockSecret.Derivation(salt: salt, opsLimit: opsLimit, memLimit: memLimit)
        if kind == .passphrase, let known = secret.derivedKey(input) { return known }
        Self.countDerivation(kind)
        switch kind {
        case .keyFile:
            return secret.bytes.withUnsafeBytes { keyFileBytes in
                Sodium.keyedHash(
                    outputBytes: Sodium.aeadKeyBytes, key: keyFileBytes,
                    message: Array("TFYVAULT-keyfile-v1".utf8) + salt)
            }
        case .passphrase:
            guard let key = Sodium.argon2id(passphrase: secret.bytes, salt: salt, opsLimit: opsLimit, memLimit: memLimit)
            else {
                throw VaultError(
                    .io, "could not allocate \(memLimit / 1_048_576) MiB for the passphrase key derivation",
                    hint: "free memory, or add a slot with `keys add --kdf interactive`")
            }
            secret.remember(key, for: input)
            return key
        }
    }
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
            let line = kind == .passphrase ? "argon2id\n" : "key-file\n"
            _ = line.withCString { Glibc.write(descriptor, $0, strlen($0)) }
            Glibc.close(descriptor)
        #endif
    }
}

/// What may be shown about an unlock slot: never key material.
public struct SlotInfo: Sendable, Equatable, Codable {
    public var label: String
    public var kind: SlotKind
    /// Argon2id cost of a passphrase slot.
    public var opsLimit: UInt64?
    public var memLimitBytes: UInt64?
    /// A passphrase slot whose Argon2id cost is below libsodium's
    /// `interactive` preset (2 passes, 64 MiB): guessing its passphrase is
    /// cheap. Only a debug build writes one; `keys list` and `status` flag it.
    public var weak: Bool

    init(_ slot: KeySlot) {
        label = slot.label
        kind = slot.kind
        opsLimit = slot.kind == .passphrase ? slot.opsLimit : nil
        memLimitBytes = slot.kind == .passphrase ? slot.memLimit : nil
        weak = slot.kind == .passphrase && KDFLevel.isWeak(opsLimit: slot.opsLimit, memLimit: slot.memLimit)
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A passphrase slot: the slot key is Argon2id (`crypto_pwhash`) of the
/// passphrase and the slot's salt, at the cost stored in the slot
/// (parameters: opsLimit u64 ‖ memLimit u64, little-endian).
enum PassphraseSlot: SlotMethod {
    static let name = "passphrase"
    static let unlockHint = "its passphrase (--passphrase-file or the prompt)"

    static func cost(_ slot: KeySlot) -> (opsLimit: UInt64, memLimit: UInt64) {
        guard slot.kind == .passphrase, slot.parameters.count == 16 else { return (0, 0) }
        var reader = ByteReader(Data(slot.parameters))
        return ((try? reader.u64("key slot")) ?? 0, (try? reader.u64("key slot")) ?? 0)
    }

    static func readParameters(from reader: inout ByteReader, label: String) throws -> [UInt8] {
        let ops = try reader.u64("key slot")
        let mem = try reader.u64("key slot")
        guard (KDFLevel.minOpsLimit...KDFLevel.maxOpsLimit).contains(ops),
            (KDFLevel.minMemLimit...KDFLevel.maxMemLimit).contains(mem)
        else {
            throw VaultError(.corrupt, "key slot \"\(label)\" asks for an Argon2id cost outside the accepted limits (at most \(KDFLevel.maxOpsLimit) passes and \(KDFLevel.maxMemLimit >> 20) MiB)",
                hint: "the file was damaged or crafted; restore it from a backup")
        }
        return encode(ops, mem)
    }

    static func newSlotKey(for secret: UnlockSecret, salt: [UInt8], kdf: KDFLevel) throws -> (parameters: [UInt8], key: SecretBox) {
        let (ops, mem) = kdf.parameters
        let parameters = encode(ops, mem)
        let probe = KeySlot(kind: .passphrase, label: name, salt: salt, parameters: parameters, nonce: [], wrappedKey: [])
        return (parameters, SecretBox(try derive(probe, secret)))
    }

    static func slotKey(_ slot: KeySlot, with secret: UnlockSecret) throws -> SecretBytes? {
        try derive(slot, secret)
    }

    static func describe(_ slot: KeySlot, into info: inout SlotInfo) {
        let (ops, mem) = cost(slot)
        info.opsLimit = ops
        info.memLimitBytes = mem
        info.weak = KDFLevel.isWeak(opsLimit: ops, memLimit: mem)
    }

    static func kdfLevel(of slot: KeySlot) -> KDFLevel {
        let (ops, mem) = cost(slot)
        return KDFLevel.matching(opsLimit: ops, memLimit: mem)
    }

    private static func encode(_ ops: UInt64, _ mem: UInt64) -> [UInt8] {
        var writer = ByteWriter()
        writer.u64(ops)
        writer.u64(mem)
        return writer.bytes
    }

    private static func derive(_ slot: KeySlot, _ secret: UnlockSecret) throws -> SecretBytes {
        let (ops, mem) = cost(slot)
        let input = UnlockSecret.Derivation(salt: slot.salt, opsLimit: ops, memLimit: mem)
        if let known = secret.derivedKey(input) { return known }
        KeySlot.countDerivation(.passphrase)
        guard let key = Sodium.argon2id(passphrase: secret.bytes, salt: slot.salt, opsLimit: ops, memLimit: mem) else {
            throw VaultError(
                .io, "could not allocate \(mem / 1_048_576) MiB for the passphrase key derivation",
                hint: "free memory, or add a slot with `keys add --kdf interactive`")
        }
        secret.remember(key, for: input)
        return key
    }
}

/// A key-file slot: the slot key is BLAKE2b-256 keyed with the file's 32
/// bytes over "TFYVAULT-keyfile-v1" ‖ salt. No parameters of its own.
enum KeyFileSlot: SlotMethod {
    static let name = "key-file"
    static let unlockHint = "its key file (--key-file)"

    static func readParameters(from reader: inout ByteReader, label: String) throws -> [UInt8] { [] }

    static func newSlotKey(for secret: UnlockSecret, salt: [UInt8], kdf: KDFLevel) throws -> (parameters: [UInt8], key: SecretBox) {
        ([], SecretBox(derive(salt, secret)))
    }

    static func slotKey(_ slot: KeySlot, with secret: UnlockSecret) throws -> SecretBytes? {
        KeySlot.countDerivation(.keyFile)
        return derive(slot.salt, secret)
    }

    private static func derive(_ salt: [UInt8], _ secret: UnlockSecret) -> SecretBytes {
        secret.bytes.withUnsafeBytes { keyFileBytes in
            Sodium.keyedHash(outputBytes: Sodium.aeadKeyBytes, key: keyFileBytes, message: Array("TFYVAULT-keyfile-v1".utf8) + salt)
        }
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A PKCS#11 slot: the slot key is 32 random bytes, kept in the slot
/// encrypted to an RSA key pair on a token (RSA-OAEP, SHA-256, MGF1-SHA-256,
/// empty label), so only the token can give it back and the private key
/// never leaves it. The slot also records which token and key it was made
/// for, for `keys list`; unlocking tries the key the user's URI names.
///
/// Parameters (SECURITY.md "Key slots"):
///
///     mechanism u8 (1 = RSA-OAEP-SHA-256) | token label length u8 | token label
///     | serial length u8 | serial | key id length u8 | key id
///     | ciphertext length u16 | ciphertext (the RSA-OAEP encryption of the slot key)
enum Pkcs11Slot: SlotMethod {
    static let name = "pkcs11"
    static let unlockHint = "its PKCS#11 token (--pkcs11 URI or TALLYFY_VAULT_PKCS11_URI)"
    /// Vaults with a PKCS#11 slot are format version 2, so an older release
    /// says "version 2 is not supported" instead of "damaged".
    static let formatVersion: UInt16 = 2
    static let rsaOAEPSHA256: UInt8 = 1
    static let maxCiphertextLength = 1024

    struct Fields {
        var tokenLabel: String
        var tokenSerial: String
        var keyID: [UInt8]
        var ciphertext: [UInt8]
    }

    static func readParameters(from reader: inout ByteReader, label: String) throws -> [UInt8] {
        let start = reader.offset
        let mechanism = try reader.u8("key slot")
        guard mechanism == rsaOAEPSHA256 else {
            throw VaultError(.corrupt, "key slot \"\(label)\" uses a PKCS#11 mechanism this release does not know (\(mechanism))",
                hint: "open it with the tallyfy-vault release that wrote it")
        }
        for _ in 0..<3 {
            let fieldLength = Int(try reader.u8("key slot"))
            _ = try reader.raw(fieldLength, "key slot")
        }
        let length = Int(try reader.u16("key slot"))
        guard (1...maxCiphertextLength).contains(length) else {
            throw VaultError(.corrupt, "the vault header has a damaged PKCS#11 key slot", hint: ByteReader.restoreHint)
        }
        _ = try reader.raw(length, "key slot")
        let bytes = Array(reader.data[reader.data.startIndex + start..<reader.data.startIndex + reader.offset])
        guard let fields = fields(bytes), SlotLabel.isValid(fields.tokenLabel) || fields.tokenLabel.isEmpty,
            !fields.tokenSerial.unicodeScalars.contains(where: \.isControl)
        else {
            throw VaultError(.corrupt, "the vault header has a damaged PKCS#11 key slot", hint: ByteReader.restoreHint)
        }
        return bytes
    }

    static func newSlotKey(for secret: UnlockSecret, salt: [UInt8], kdf: KDFLevel) throws -> (parameters: [UInt8], key: SecretBox) {
        let token = try self.token(secret)
        let key = SecretBox(SecretBytes.random(count: Sodium.aeadKeyBytes))
        let (ciphertext, identity) = try token.encrypt(key.bytes, pin: secret.bytes)
        // A slot only the public half can make but the token can't open
        // (a public key without its private key, a key not allowed to
        // decrypt) would lock out whoever relies on it: prove it opens first.
        guard let back = try token.decrypt(ciphertext, pin: secret.bytes),
            back.bytes.withUnsafeBytes({ a in key.bytes.withUnsafeBytes { b in Sodium.equal(a, b) } })
        else {
            throw VaultError(.usage, "the token's private key for \(token.uri.text) does not decrypt what its public key encrypts; no slot was added",
                hint: "name a key pair whose halves belong together (same id=) and that may decrypt")
        }
        var writer = ByteWriter()
        writer.u8(rsaOAEPSHA256)
        for field in [Array(identity.tokenLabel.utf8.prefix(32)), Array(identity.tokenSerial.utf8.prefix(16)), Array(identity.keyID.prefix(255))] {
            writer.u8(UInt8(field.count))
            writer.raw(field)
        }
        writer.u16(UInt16(ciphertext.count))
        writer.raw(ciphertext)
        return (writer.bytes, key)
    }

    static func slotKey(_ slot: KeySlot, with secret: UnlockSecret) throws -> SecretBytes? {
        guard let fields = fields(slot.parameters) else { return nil }
        KeySlot.countDerivation(.pkcs11)
        guard let box = try token(secret).decrypt(fields.ciphertext, pin: secret.bytes) else { return nil }
        return box.bytes.withUnsafeBytes { SecretBytes(copying: $0) }
    }

    static func describe(_ slot: KeySlot, into info: inout SlotInfo) {
        guard let fields = fields(slot.parameters) else { return }
        info.token = fields.tokenLabel
        info.tokenSerial = fields.tokenSerial
        info.keyID = Pkcs11Token.hex(fields.keyID)
    }

    private static func token(_ secret: UnlockSecret) throws -> Pkcs11Token {
        guard let token = secret.device as? Pkcs11Token else {
            preconditionFailure("a PKCS#11 unlock secret always carries its token")
        }
        return token
    }

    /// The parameters split into their fields; `nil` when they don't add up.
    static func fields(_ parameters: [UInt8]) -> Fields? {
        var reader = ByteReader(Data(parameters))
        func field(wide: Bool = false) -> [UInt8]? {
            guard let length = wide ? (try? reader.u16("key slot")).map(Int.init) : (try? reader.u8("key slot")).map(Int.init) else { return nil }
            return try? reader.bytes(length, "key slot")
        }
        guard (try? reader.u8("key slot")) == rsaOAEPSHA256,
            let label = field(), let serial = field(), let id = field(), let ciphertext = field(wide: true),
            reader.remaining == 0,
            let labelText = String(validating: label, as: UTF8.self),
            let serialText = String(validating: serial, as: UTF8.self)
        else { return nil }
        return Fields(tokenLabel: labelText, tokenSerial: serialText, keyID: id, ciphertext: ciphertext)
    }
}

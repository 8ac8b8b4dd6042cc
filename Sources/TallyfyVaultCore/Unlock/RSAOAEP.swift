import CSodium

/// EME-OAEP (RFC 8017 §7.1) with SHA-256, MGF1-SHA-256 and an empty label,
/// for tokens that do bare RSA but not OAEP with SHA-256 (SoftHSM2 2.6 knows
/// OAEP with SHA-1 only): the token still does the RSA operation with its
/// key, which never leaves it, and the file holds the same standard
/// RSA-OAEP-SHA-256 ciphertext either way (SECURITY.md, "Key slots").
enum RSAOAEP {
    static let hashLength = 32

    static func sha256(_ bytes: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: hashLength)
        _ = Sodium.ready
        crypto_hash_sha256(&out, bytes, UInt64(bytes.count))
        return out
    }

    /// MGF1 with SHA-256: `length` bytes from `seed`.
    static func mgf1(_ seed: [UInt8], _ length: Int) -> [UInt8] {
        var out: [UInt8] = []
        var counter: UInt32 = 0
        while out.count < length {
            out += sha256(seed + [UInt8(counter >> 24), UInt8(truncatingIfNeeded: counter >> 16), UInt8(truncatingIfNeeded: counter >> 8), UInt8(truncatingIfNeeded: counter)])
            counter += 1
        }
        return Array(out.prefix(length))
    }

    /// The encoded message EM (`modulusLength` bytes, starting 0x00) for
    /// `message`; `nil` when the message is too long for the modulus.
    static func encode(_ message: UnsafeRawBufferPointer, modulusLength k: Int) -> [UInt8]? {
        let h = hashLength
        guard k >= 2 * h + 2 + message.count else { return nil }
        var db = sha256([]) + [UInt8](repeating: 0, count: k - message.count - 2 * h - 2) + [0x01] + Array(message)
        defer { db.wipe() }
        var seed = [UInt8](repeating: 0, count: h)
        defer { seed.wipe() }
        randombytes_buf(&seed, h)
        let maskedDB = zip(db, mgf1(seed, k - h - 1)).map { $0 ^ $1 }
        let maskedSeed = zip(seed, mgf1(maskedDB, h)).map { $0 ^ $1 }
        return [0x00] + maskedSeed + maskedDB
    }

    /// The message in `em` (a bare RSA decryption, left-padded with zeros to
    /// `modulusLength`), into guarded memory; `nil` when it is not a valid
    /// encoding (another key's ciphertext).
    static func decode(_ em: UnsafeRawBufferPointer, modulusLength k: Int) -> SecretBytes? {
        let h = hashLength
        guard em.count <= k, k >= 2 * h + 2 else { return nil }
        var padded = [UInt8](repeating: 0, count: k - em.count) + Array(em)
        defer { padded.wipe() }
        let maskedSeed = Array(padded[1...h])
        let maskedDB = Array(padded[(h + 1)...])
        var seed = zip(maskedSeed, mgf1(maskedDB, h)).map { $0 ^ $1 }
        defer { seed.wipe() }
        var db = zip(maskedDB, mgf1(seed, k - h - 1)).map { $0 ^ $1 }
        defer { db.wipe() }
        // Every check is made before any is acted on, so the answer takes
        // the same path whichever part is wrong.
        var bad = padded[0] != 0 ? 1 : 0
        bad |= sha256([]).withUnsafeBytes { a in db.withUnsafeBytes { b in Sodium.equal(a, UnsafeRawBufferPointer(rebasing: b[..<h])) } } ? 0 : 1
        var separator = -1
        for index in h..<db.count where separator < 0 {
            if db[index] == 0x01 { separator = index } else if db[index] != 0 { bad = 1; separator = db.count }
        }
        guard bad == 0, separator >= h, separator < db.count else { return nil }
        var message = Array(db[(separator + 1)...])
        defer { message.wipe() }
        return SecretBytes(copying: message)
    }
}

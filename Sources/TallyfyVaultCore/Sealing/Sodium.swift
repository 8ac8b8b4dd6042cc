import CSodium
#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The few libsodium primitives the vault uses, wrapped so that no other file
/// touches C pointers for cryptography.
///
/// Every function checks libsodium's return code; a failure is either a
/// corrupt input (`VaultError.corrupt`) or, for operations that cannot fail on
/// valid input, a programming error.
package enum Sodium {
    /// `sodium_init()` runs once, on first use, and is safe from any thread.
    static let ready: Void = {
        guard sodium_init() >= 0 else { fatalError("libsodium could not be initialised") }
    }()

    static let aeadKeyBytes = Int(crypto_aead_xchacha20poly1305_ietf_KEYBYTES)  // 32
    static let aeadNonceBytes = Int(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES)  // 24
    static let aeadTagBytes = Int(crypto_aead_xchacha20poly1305_ietf_ABYTES)  // 16

    /// Fresh random bytes from the operating system's generator.
    package static func randomBytes(_ count: Int) -> [UInt8] {
        _ = ready
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, count) }
        return bytes
    }

    /// XChaCha20-Poly1305 (IETF) encryption; returns ciphertext || tag.
    static func seal(
        _ plaintext: UnsafeRawBufferPointer, key: borrowing SecretBytes, nonce: [UInt8], associatedData: some ContiguousBytes
    ) -> [UInt8] {
        _ = ready
        precondition(nonce.count == aeadNonceBytes && key.count == aeadKeyBytes)
        var out = [UInt8](repeating: 0, count: plaintext.count + aeadTagBytes)
        var outLength: UInt64 = 0
        associatedData.withUnsafeBytes { ad in
            key.withUnsafeBytes { k in
                let rc = crypto_aead_xchacha20poly1305_ietf_encrypt(
                    &out, &outLength,
                    plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(plaintext.count),
                    ad.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(ad.count),
                    nil, nonce, k.baseAddress!.assumingMemoryBound(to: UInt8.self))
                precondition(rc == 0, "xchacha20poly1305 encryption cannot fail on valid input")
            }
        }
        return out
    }

    /// XChaCha20-Poly1305 decryption into guarded memory; `nil` when the tag
    /// does not verify (wrong key, or the bytes or associated data changed).
    static func open(
        _ ciphertext: some ContiguousBytes, key: borrowing SecretBytes, nonce: some ContiguousBytes,
        associatedData: some ContiguousBytes
    ) -> SecretBytes? {
        let sealedLength = ciphertext.withUnsafeBytes { $0.count }
        guard sealedLength >= aeadTagBytes else { return nil }
        var plain = SecretBytes(count: sealedLength - aeadTagBytes)
        let opened = plain.withUnsafeMutableBytes {
            open(ciphertext, key: key, nonce: nonce, associatedData: associatedData, into: $0)
        }
        guard opened != nil else { return nil }
        return plain
    }

    /// Decryption into the start of `plain` (which must have room for the
    /// ciphertext less its tag): returns the plaintext's length, or `nil` when
    /// the tag does not verify. Lets a listing reuse one guarded buffer.
    static func open(
        _ ciphertext: some ContiguousBytes, key: borrowing SecretBytes, nonce: some ContiguousBytes,
        associatedData: some ContiguousBytes, into plain: UnsafeMutableRawBufferPointer
    ) -> Int? {
        _ = ready
        let rc = ciphertext.withUnsafeBytes { c -> Int32 in
            guard c.count >= aeadTagBytes else { return -1 }
            precondition(plain.count >= c.count - aeadTagBytes)
            return nonce.withUnsafeBytes { n in
                associatedData.withUnsafeBytes { ad in
                    key.withUnsafeBytes { k in
                        precondition(n.count == aeadNonceBytes && k.count == aeadKeyBytes)
                        var plainLength: UInt64 = 0
                        return crypto_aead_xchacha20poly1305_ietf_decrypt(
                            plain.baseAddress?.assumingMemoryBound(to: UInt8.self), &plainLength, nil,
                            c.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(c.count),
                            ad.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(ad.count),
                            n.baseAddress!.assumingMemoryBound(to: UInt8.self),
                            k.baseAddress!.assumingMemoryBound(to: UInt8.self))
                    }
                }
            }
        }
        return rc == 0 ? ciphertext.withUnsafeBytes { $0.count } - aeadTagBytes : nil
    }

    /// Keyed BLAKE2b (`crypto_generichash`) into guarded memory.
    static func keyedHash(outputBytes: Int, key: UnsafeRawBufferPointer, message: some ContiguousBytes) -> SecretBytes {
        var out = SecretBytes(count: outputBytes)
        out.withUnsafeMutableBytes { keyedHash(key: key, message: message, into: $0) }
        return out
    }

    /// Keyed BLAKE2b into an ordinary array, for names that are stored in the
    /// clear anyway (record locators, profile tags): guarded memory would cost
    /// a dozen system calls per name and protect nothing.
    static func keyedName(outputBytes: Int, key: UnsafeRawBufferPointer, message: some ContiguousBytes) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: outputBytes) { out, count in
            keyedHash(key: key, message: message, into: UnsafeMutableRawBufferPointer(out))
            count = outputBytes
        }
    }

    private static func keyedHash(key: UnsafeRawBufferPointer, message: some ContiguousBytes, into out: UnsafeMutableRawBufferPointer) {
        _ = ready
        message.withUnsafeBytes { m in
            let rc = crypto_generichash(
                out.baseAddress!.assumingMemoryBound(to: UInt8.self), out.count,
                m.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(m.count),
                key.baseAddress?.assumingMemoryBound(to: UInt8.self), key.count)
            precondition(rc == 0, "crypto_generichash cannot fail on valid sizes")
        }
    }

    /// Argon2id v1.3 (`crypto_pwhash`) of a passphrase into a 32-byte key.
    /// Returns `nil` only when libsodium cannot get the memory it was asked for.
    static func argon2id(
        passphrase: borrowing SecretBytes, salt: [UInt8], opsLimit: UInt64, memLimit: UInt64
    ) -> SecretBytes? {
        _ = ready
        precondition(salt.count == Int(crypto_pwhash_SALTBYTES))
        var key = SecretBytes(count: aeadKeyBytes)
        let rc = key.withUnsafeMutableBytes { k in
            passphrase.withUnsafeBytes { p in
                crypto_pwhash(
                    k.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(k.count),
                    p.baseAddress!.assumingMemoryBound(to: CChar.self), UInt64(p.count),
                    salt, opsLimit, Int(memLimit), crypto_pwhash_ALG_ARGON2ID13)
            }
        }
        if rc != 0 { return nil }
        return key
    }

    /// ISO/IEC 7816-4 padding (`sodium_pad`) to a multiple of `blockSize`,
    /// into guarded memory.
    static func pad(_ content: some ContiguousBytes, blockSize: Int) -> SecretBytes {
        var out = SecretBytes(count: paddedLength(content.withUnsafeBytes { $0.count }, blockSize: blockSize))
        _ = out.withUnsafeMutableBytes { pad(content, blockSize: blockSize, into: $0) }
        return out
    }

    /// The length `content.count` bytes have once padded.
    static func paddedLength(_ length: Int, blockSize: Int) -> Int {
        (length / blockSize + 1) * blockSize
    }

    /// Padding into the start of `out` (room for `paddedLength`); returns the
    /// padded length.
    static func pad(_ content: some ContiguousBytes, blockSize: Int, into out: UnsafeMutableRawBufferPointer) -> Int {
        _ = ready
        let length = content.withUnsafeBytes { $0.count }
        let padded = paddedLength(length, blockSize: blockSize)
        precondition(out.count >= padded)
        content.withUnsafeBytes { bytes in
            if length > 0 { out.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: length) }
        }
        var resultLength = 0
        let rc = sodium_pad(&resultLength, out.baseAddress!.assumingMemoryBound(to: UInt8.self), length, blockSize, padded)
        precondition(rc == 0 && resultLength == padded)
        return padded
    }

    /// The length of the content before `sodium_pad` padding, or `nil` when
    /// the padding is malformed.
    static func unpaddedLength(_ bytes: borrowing SecretBytes, blockSize: Int) -> Int? {
        bytes.withUnsafeBytes { unpaddedLength($0, blockSize: blockSize) }
    }

    static func unpaddedLength(_ b: UnsafeRawBufferPointer, blockSize: Int) -> Int? {
        _ = ready
        guard b.count > 0, b.count % blockSize == 0 else { return nil }
        var length = 0
        let rc = sodium_unpad(&length, b.baseAddress!.assumingMemoryBound(to: UInt8.self), b.count, blockSize)
        return rc == 0 ? length : nil
    }

    /// Constant-time comparison, for anything derived from secrets.
    package static func equal(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        _ = ready
        return a.count == b.count && (a.count == 0 || sodium_memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0)
    }
}

import CSodium
import Foundation

/// The claims the emulator puts in every token it issues.
///
/// `sub` is the client ID for application tokens and the user's email for
/// user tokens; `jti` is random so that two tokens issued in the same second
/// still differ (the vault's tests compare tokens to see a refresh happened).
struct TokenClaims: Codable, Sendable, Equatable {
    enum Kind: String, Codable, Sendable {
        case application
        case user
    }

    var iss: String
    var sub: String
    var kind: Kind
    var org: String
    var client_id: String
    var iat: Int
    var exp: Int
    var jti: String

    /// Whose token it is, for `--revoke-on-reissue`: the client for an
    /// application token, the user (in its organization) for a user token.
    var holder: String {
        switch kind {
        case .application: "application \(client_id)"
        case .user: "user \(org) \(sub.lowercased())"
        }
    }
}

/// HS256 JSON Web Tokens signed with a key that lives only in this process.
///
/// The key is generated at start, so tokens from an earlier run of the
/// emulator are (correctly) rejected as forged by a later one. HMAC-SHA-256
/// comes from libsodium (`crypto_auth_hmacsha256`), whose verify function
/// compares in constant time.
struct JWTSigner: Sendable {
    static let issuer = "tallyfy-emulator"

    private let key: [UInt8]

    /// A signer with a fresh random 32-byte key.
    init() {
        var key = [UInt8](repeating: 0, count: Int(crypto_auth_hmacsha256_KEYBYTES))
        randombytes_buf(&key, key.count)
        self.key = key
    }

    /// `header.payload.signature`, each part base64url without padding.
    func sign(_ claims: TokenClaims) -> String {
        let header = Base64URL.encode(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Encoding a struct of strings and integers cannot fail.
        let payload = Base64URL.encode(Array(try! encoder.encode(claims)))
        let signingInput = Array("\(header).\(payload)".utf8)
        return "\(header).\(payload).\(Base64URL.encode(mac(signingInput)))"
    }

    /// The claims of `token` when its signature is ours, its header says
    /// HS256 and it has not expired at `now`; nil otherwise (forged,
    /// malformed or expired tokens are all just "invalid_token" to a client).
    func verify(_ token: String, now: Int) -> TokenClaims? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3,
              let headerBytes = Base64URL.decode(parts[0]),
              let payloadBytes = Base64URL.decode(parts[1]),
              let signature = Base64URL.decode(parts[2]),
              signature.count == Int(crypto_auth_hmacsha256_BYTES)
        else { return nil }

        let signingInput = Array("\(parts[0]).\(parts[1])".utf8)
        let valid = signature.withUnsafeBufferPointer { sig in
            signingInput.withUnsafeBufferPointer { input in
                key.withUnsafeBufferPointer { key in
                    crypto_auth_hmacsha256_verify(
                        sig.baseAddress!, input.baseAddress, UInt64(input.count), key.baseAddress!) == 0
                }
            }
        }
        guard valid else { return nil }

        // Only after the signature checks out is the content trusted enough to parse.
        guard let header = try? JSONSerialization.jsonObject(with: Data(headerBytes)) as? [String: Any],
              header["alg"] as? String == "HS256",
              let claims = try? JSONDecoder().decode(TokenClaims.self, from: Data(payloadBytes)),
              claims.iss == Self.issuer,
              claims.exp > now
        else { return nil }
        return claims
    }

    private func mac(_ input: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(crypto_auth_hmacsha256_BYTES))
        crypto_auth_hmacsha256(&out, input, UInt64(input.count), key)
        return out
    }
}

/// Random identifiers from libsodium's CSPRNG.
enum RandomID {
    /// `byteCount` random bytes as lowercase hex.
    static func hex(byteCount: Int = 16) -> String {
        var bytes = [UInt8](repeating: 0, count: byteCount)
        randombytes_buf(&bytes, byteCount)
        return bytes.map { String(format: "%02x", $0) }.joined()
    }
}

/// base64url without padding (RFC 7515 §2), as JWTs use it.
enum Base64URL {
    static func encode(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func decode(_ text: Substring) -> [UInt8]? {
        var base64 = text
            .replacingOccurrences(of: "-", with: "+")
            .replacingOccurrences(of: "_", with: "/")
        guard !base64.contains("=") else { return nil }
        while base64.count % 4 != 0 { base64 += "=" }
        return Data(base64Encoded: base64).map(Array.init)
    }
}

/// Secret comparison that leaks neither content nor length through timing.
///
/// `sodium_memcmp` needs equal lengths, so both sides are first hashed to a
/// fixed 32 bytes with BLAKE2b; the hashes are then compared in constant time.
enum ConstantTime {
    static func equal(_ a: String, _ b: String) -> Bool {
        let ha = digest(a), hb = digest(b)
        return sodium_memcmp(ha, hb, ha.count) == 0
    }

    private static func digest(_ text: String) -> [UInt8] {
        let input = Array(text.utf8)
        var out = [UInt8](repeating: 0, count: 32)
        crypto_generichash(&out, out.count, input, UInt64(input.count), nil, 0)
        return out
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// When a freshly issued token stops working.
///
/// Tallyfy says how long a token lives in `expires_in`, counted from when we
/// received it. Its tokens are also JWTs whose `exp` claim is the moment the
/// server will actually reject them; if the two disagree (a proxy delayed the
/// answer, the server's clock differs, the token was minted earlier), the
/// earlier moment is the honest one, so a token is never used past either.
package enum TokenExpiry {
    /// The expiry of `accessToken` received at `receivedAt` with `expiresIn`
    /// seconds to live: the earlier of `receivedAt + expiresIn` and the JWT
    /// `exp` claim, whichever of the two exist.
    ///
    /// When neither exists the token's lifetime is unknown; this returns
    /// `receivedAt` (already expired) so that nothing trusts it. Callers that
    /// must reject such a token use `knownExpiry(of:expiresIn:receivedAt:)`
    /// instead; `TallyfyClient` does, and reports an unexpected response.
    package static func expiry(of accessToken: String, expiresIn: Int?, receivedAt: Date) -> Date {
        knownExpiry(of: accessToken, expiresIn: expiresIn, receivedAt: receivedAt) ?? receivedAt
    }

    /// Like `expiry(of:expiresIn:receivedAt:)`, but `nil` when neither
    /// `expiresIn` nor a JWT `exp` claim says when the token expires.
    package static func knownExpiry(of accessToken: String, expiresIn: Int?, receivedAt: Date) -> Date? {
        let fromExpiresIn = expiresIn.map { receivedAt.addingTimeInterval(TimeInterval($0)) }
        let fromJWT = jwtExpiry(of: accessToken)
        switch (fromExpiresIn, fromJWT) {
        case let (a?, b?): return min(a, b)
        case let (a?, nil): return a
        case let (nil, b?): return b
        case (nil, nil): return nil
        }
    }

    /// The `exp` claim of a JWT (three base64url parts whose middle one is a
    /// JSON object), or `nil` when the token is not such a JWT or has no
    /// numeric `exp`. The signature is not checked: the vault only uses the
    /// claim to avoid keeping a token longer than its issuer intends.
    package static func jwtExpiry(of token: String) -> Date? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[1].isEmpty,
              let payload = base64URLDecode(parts[1]),
              let claims = try? JSONDecoder().decode(ExpClaim.self, from: payload),
              let seconds = claims.exp
        else { return nil }
        // Before year 10000: anything else is not a real expiry.
        guard seconds.isFinite, seconds > 0, seconds < 253_402_300_800 else { return nil }
        return Date(timeIntervalSince1970: seconds)
    }

    /// The one claim we read. Decoding fails (and the token counts as not a
    /// JWT) when `exp` is present but not a number, e.g. a string or `true`.
    private struct ExpClaim: Decodable {
        let exp: Double?
    }

    /// Decodes unpadded base64url (RFC 4648 §5), as used by JWTs.
    static func base64URLDecode<S: StringProtocol>(_ text: S) -> Data? {
        var base64 = String(text)
            .replacing("-", with: "+")
            .replacing("_", with: "/")
        guard !base64.contains("=") else { return nil }
        let remainder = base64.count % 4
        if remainder == 1 { return nil }
        if remainder > 0 { base64 += String(repeating: "=", count: 4 - remainder) }
        return Data(base64Encoded: base64)
    }
}

import Foundation
import TallyfyVaultCore

/// A bearer token Tallyfy issued, with the moment it stops working.
///
/// The expiry is absolute (not "seconds left") so it can be sealed and
/// compared with the clock later, by `token --min-ttl`, `check` and `status`.
package struct IssuedToken: Sendable, Equatable {
    package let accessToken: String
    package let expiresAt: Date

    package init(accessToken: String, expiresAt: Date) {
        self.accessToken = accessToken
        self.expiresAt = expiresAt
    }
}

/// The body of a successful token answer, from the token endpoint or the
/// user-token endpoint: `{"token_type":"Bearer","expires_in":N,"access_token":"…"}`.
///
/// Parsing is strict about what the vault relies on (a Bearer token made of
/// characters that can go into an HTTP header and an environment variable,
/// and a knowable, positive lifetime) and lenient about the rest (extra
/// fields, `expires_in` sent as a string), so a proxy's HTML page or a
/// truncated body is recognised as such instead of being sealed as a token.
struct TokenResponse: Sendable, Equatable {
    let accessToken: String
    let expiresIn: Int?

    /// The longest access token we accept; real ones are a few KiB at most.
    static let maxTokenLength = VaultBounds.maxTokenLength

    /// The lifetimes accepted (1 s to 10 years): a token said to live longer
    /// would be sealed with a date the vault cannot hold or trust.
    static let lifetimes = VaultBounds.minimumTokenLifetime...VaultBounds.maximumTokenLifetime

    /// `nil` when the body is not a usable token answer.
    static func decode(_ body: Data) -> TokenResponse? {
        guard let wire = try? JSONDecoder().decode(Wire.self, from: body),
              let token = wire.access_token, isPlausibleToken(token),
              let type = wire.token_type, type.lowercased() == "bearer"
        else { return nil }
        if let expiresIn = wire.expires_in?.value, !lifetimes.contains(TimeInterval(expiresIn)) { return nil }
        return TokenResponse(accessToken: token, expiresIn: wire.expires_in?.value)
    }

    /// The token with its expiry (the earlier of `expires_in` and the JWT
    /// `exp`), or `nil` when neither says when it expires or the expiry is
    /// more than 10 years after `receivedAt` (a JWT `exp` centuries ahead).
    /// An `exp` already past is kept: such a token is simply renewed at its
    /// next use (and a one-second token's `exp`, in whole seconds, can fall
    /// just before its receipt).
    func issued(receivedAt: Date) -> IssuedToken? {
        guard let expiresAt = TokenExpiry.knownExpiry(of: accessToken, expiresIn: expiresIn, receivedAt: receivedAt),
              expiresAt.timeIntervalSince(receivedAt) <= Self.lifetimes.upperBound, VaultBounds.isValid(expiresAt)
        else { return nil }
        return IssuedToken(accessToken: accessToken, expiresAt: expiresAt)
    }

    /// Visible ASCII only: anything else could not be sent back in an
    /// `Authorization` header or exported safely.
    static func isPlausibleToken(_ token: String) -> Bool {
        !token.isEmpty && token.utf8.count <= maxTokenLength && token.utf8.allSatisfy { (0x21...0x7E).contains($0) }
    }

    private struct Wire: Decodable {
        let access_token: String?
        let token_type: String?
        let expires_in: Seconds?
    }

    /// A whole number of seconds, sent as a number (`604800`, `604800.0`)
    /// or a numeric string (`"604800"`).
    private struct Seconds: Decodable {
        let value: Int

        init(from decoder: Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let int = try? container.decode(Int.self) {
                value = int
            } else if let double = try? container.decode(Double.self),
                      double.isFinite, double == double.rounded(), abs(double) < 1e15 {
                value = Int(double)
            } else if let text = try? container.decode(String.self),
                      let int = Int(text.trimmingCharacters(in: .whitespaces)) {
                value = int
            } else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "expires_in is not a number")
            }
        }
    }
}

/// The `error` code of an OAuth 2.0 error answer (RFC 6749 §5.2) or of a
/// Tallyfy API error body, when the body is a JSON object that has one.
///
/// Only the code is ever shown, and only when it looks like a code (short,
/// `[a-z_]`), never the description or anything else from the body.
func errorCode(in body: Data) -> String? {
    guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
          let code = object["error"] as? String,
          !code.isEmpty, code.count <= 64,
          code.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || $0 == "_" })
    else { return nil }
    return code
}

/// The per-field messages of a 422 answer (`{"errors":{"email":["…"]}}`,
/// Laravel style), as one line: `email: The email must be … ; first_name: …`,
/// cut to about `limit` characters. They describe the fields the user typed,
/// so they may be shown; control characters are dropped all the same.
func fieldErrors(in body: Data, limit: Int = 200) -> String? {
    guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
          let errors = (object["errors"] as? [String: Any]) ?? (object["error"] as? [String: Any])
    else { return nil }
    var parts: [String] = []
    for field in errors.keys.sorted() {
        guard field.count <= 40,
              field.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) || $0 == "_" || $0 == "." })
        else { continue }
        let messages: [String]
        switch errors[field] {
        case let list as [Any]: messages = list.compactMap { $0 as? String }
        case let single as String: messages = [single]
        default: messages = []
        }
        let text = messages.map(singleLine).filter { !$0.isEmpty }.joined(separator: " ")
        parts.append(text.isEmpty ? field : "\(field): \(text)")
    }
    guard !parts.isEmpty else { return nil }
    let line = parts.joined(separator: "; ")
    return line.count > limit ? String(line.prefix(limit - 1)) + "…" : line
}

/// Collapses whitespace and drops control characters.
private func singleLine(_ text: String) -> String {
    let cleaned = String(String.UnicodeScalarView(text.unicodeScalars.map {
        CharacterSet.controlCharacters.contains($0) || CharacterSet.newlines.contains($0) ? " " : $0
    }))
    return cleaned.split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
}

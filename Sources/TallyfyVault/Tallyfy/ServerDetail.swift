import Foundation
import NIOHTTP1
import TallyfyVaultCore

/// What a Tallyfy error answer says about itself, reduced to what may be
/// shown: a short code, a one-line message and the request ID.
///
/// Tallyfy answers in two shapes, and both are read:
///
/// - the API's own: `{"error": true, "code": "RESOURCE_NOT_FOUND",
///   "message": "…"}`, and `{"error": true, "errors": {"field": ["…"]}}` for
///   a 422 (tallyfy/documentation, open-api/api-clients/postman/
///   troubleshooting.mdx); a 429 carries `"code": "RATE_LIMIT_EXCEEDED"`;
/// - OAuth 2.0's (RFC 6749 §5.2) from the token endpoint:
///   `{"error": "invalid_client", "error_description": "…"}`.
///
/// Tallyfy Support asks for the `X-Request-Id` of a failed call, so it is
/// shown whenever the server sent one (Tallyfy's CLI keeps it too:
/// tallyfy/cli, pkg/tallyfy/errors.go). The message is cleaned (one line,
/// no control characters, at most 160 characters) and dropped altogether if
/// it quotes anything the request carried that is secret.
struct ServerDetail: Sendable, Equatable {
    /// `RESOURCE_NOT_FOUND`, `invalid_client`: letters, digits and `_` only.
    var code: String?
    /// The server's message, cleaned.
    var message: String?
    /// The `X-Request-Id` header, cleaned.
    var requestID: String?

    init(code: String? = nil, message: String? = nil, requestID: String? = nil) {
        self.code = code
        self.message = message
        self.requestID = requestID
    }

    init(_ reply: Reply, redacting sensitive: [String] = []) {
        self.init(body: reply.body, requestID: reply.headers.first(name: "X-Request-Id"), redacting: sensitive)
    }

    init(body: Data, requestID: String?, redacting sensitive: [String] = []) {
        let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
        // `code` (the API's shape) first, then an OAuth `error` string.
        code = (object?["code"] as? String).flatMap(Self.cleanCode)
            ?? (object?["error"] as? String).flatMap(Self.cleanCode)
        let rawMessage = (object?["message"] as? String) ?? (object?["error_description"] as? String)
        if let rawMessage, !sensitive.contains(where: { !$0.isEmpty && rawMessage.contains($0) }) {
            let line = Self.oneLine(rawMessage)
            message = line.isEmpty ? nil : (line.count > 160 ? String(line.prefix(159)) + "…" : line)
        }
        self.requestID = requestID.flatMap(Self.cleanRequestID)
    }

    /// `: "message" (request ID abc-123)`, or as much of it as is known; empty
    /// when the server said nothing usable. Appended to an error message.
    var suffix: String {
        var text = ""
        if let message { text += ": \"\(message)\"" }
        if let requestID { text += " (request ID \(requestID))" }
        return text
    }

    /// ` (request ID abc-123)` alone, for messages that must not quote the
    /// server (an `invalid_client` answer describes the credentials).
    var requestSuffix: String {
        requestID.map { " (request ID \($0))" } ?? ""
    }

    static func cleanCode(_ value: String) -> String? {
        guard !value.isEmpty, value.count <= 64,
              value.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_" })
        else { return nil }
        return value
    }

    static func cleanRequestID(_ value: String) -> String? {
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty, trimmed.count <= 128,
              trimmed.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "-_.:/=+".unicodeScalars.contains($0)) })
        else { return nil }
        return trimmed
    }

    /// Whitespace collapsed, control and format characters dropped (no
    /// terminal escapes, no bidi overrides).
    static func oneLine(_ text: String) -> String {
        let scalars = text.unicodeScalars.map { scalar -> Unicode.Scalar in
            switch scalar.properties.generalCategory {
            case .control, .format, .lineSeparator, .paragraphSeparator, .privateUse, .surrogate, .unassigned:
                return " "
            default:
                return scalar
            }
        }
        return String(String.UnicodeScalarView(scalars)).split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
    }
}

/// The rate-limit headers of a 429: how long to wait, and the quota.
///
/// Tallyfy sends `Retry-After` (seconds) with every 429 and
/// `X-RateLimit-Remaining` (tallyfy/documentation, open-api/index.mdx and
/// postman/troubleshooting.mdx: 600 requests a minute per user, hourly caps
/// on some actions). `X-RateLimit-Limit` and `X-RateLimit-Reset` (Unix
/// seconds, as Laravel's throttle middleware sends them) are read when present.
struct RateLimitInfo: Sendable, Equatable {
    /// Seconds to wait, from `Retry-After`, else from `X-RateLimit-Reset`.
    var waitSeconds: Double?
    /// Which header `waitSeconds` came from, for the message.
    var source: String = "Retry-After"
    var limit: Int?
    var remaining: Int?

    init(_ headers: HTTPHeaders, now: Date) {
        if let retryAfter = headers.first(name: "Retry-After"),
           let seconds = RetryPolicy.parseRetryAfter(retryAfter, now: now) {
            waitSeconds = seconds
        } else if let reset = headers.first(name: "X-RateLimit-Reset").flatMap({ Double($0.trimmingCharacters(in: .whitespaces)) }),
                  reset.isFinite, reset > 0 {
            // A Unix time (Laravel), or a number of seconds (some proxies).
            waitSeconds = reset > 1_000_000_000 ? max(0, reset - now.timeIntervalSince1970) : reset
            source = "X-RateLimit-Reset"
        }
        if let waitSeconds, !waitSeconds.isFinite || waitSeconds > 10 * 365 * 86_400 { self.waitSeconds = nil }
        limit = headers.first(name: "X-RateLimit-Limit").flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        remaining = headers.first(name: "X-RateLimit-Remaining").flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    }

    /// `0 of 600 requests left in this window`, when the headers say so.
    var quotaText: String? {
        switch (remaining, limit) {
        case let (remaining?, limit?): "\(remaining) of \(limit) requests left in this window"
        case let (remaining?, nil): "\(remaining) requests left in this window"
        default: nil
        }
    }
}

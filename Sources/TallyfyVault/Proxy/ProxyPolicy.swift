import Foundation
import TallyfyVaultCore

/// A request the proxy answers itself and never forwards: the status, a
/// `code` and a message in Tallyfy's own error shape
/// (`{"error":true,"code":"…","message":"…"}`), so a client written for
/// Tallyfy reports it as it would any API error.
package struct ProxyRefusal: Error, Sendable, Equatable {
    package var status: Int
    package var code: String
    package var message: String

    package init(_ status: Int, _ code: String, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    /// The JSON body: Tallyfy's error shape, plus `"source":"tallyfy-vault proxy"`
    /// so a person reading a log can tell the proxy's answer from Tallyfy's.
    package var body: String {
        "{\"error\":true,\"code\":\"\(code)\",\"message\":\"\(Self.escaped(message))\",\"source\":\"tallyfy-vault proxy\"}"
    }

    static func escaped(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    static let unauthenticated = ProxyRefusal(401, "UNAUTHENTICATED",
        "Unauthenticated. Send the capability this run was given (TALLYFY_API_TOKEN) as Authorization: Bearer")
    static func badRequest(_ why: String) -> ProxyRefusal { ProxyRefusal(400, "VAULT_PROXY_BAD_REQUEST", why) }
    static func forbidden(_ why: String) -> ProxyRefusal { ProxyRefusal(403, "VAULT_PROXY_FORBIDDEN", why) }
    package static let headersTooLarge = ProxyRefusal(431, "VAULT_PROXY_HEADERS_TOO_LARGE", "Request header fields too large.")
    package static let requestTimeout = ProxyRefusal(408, "VAULT_PROXY_REQUEST_TIMEOUT", "The request was not sent in time.")
    package static let malformed = ProxyRefusal(400, "VAULT_PROXY_BAD_REQUEST", "Malformed HTTP request.")
    static let badGateway = ProxyRefusal(502, "VAULT_PROXY_BAD_GATEWAY", "Tallyfy could not be reached or gave no valid answer.")
    static let gatewayTimeout = ProxyRefusal(504, "VAULT_PROXY_GATEWAY_TIMEOUT", "Tallyfy did not answer in time.")
    static let noToken = ProxyRefusal(502, "VAULT_PROXY_NO_TOKEN", "The vault could not provide a valid token.")
}

/// One `--allow METHOD:PATH-GLOB` rule: a method (or `*`) and a path below the
/// API URL, segment by segment, where `*` in a segment matches any text
/// within that segment and a segment `**` matches any number of segments
/// (none included). `GET:/organizations/*/processes/**` allows reading every
/// process of every organization, and nothing else.
package struct ProxyAllowRule: Sendable, Equatable, CustomStringConvertible {
    /// Upper-case; `nil` for any method.
    package let method: String?
    package let segments: [String]

    package init(parsing text: String) throws {
        let hint = "write METHOD:PATH-GLOB below the API URL, e.g. --allow GET:/organizations/*/processes/** or --allow '*:/organizations/**'"
        guard let colon = text.firstIndex(of: ":") else {
            throw VaultError(.usage, "--allow \(text.debugDescription) has no METHOD:", hint: hint)
        }
        let method = String(text[..<colon]).uppercased()
        let path = String(text[text.index(after: colon)...])
        guard method == "*" || (!method.isEmpty && method.allSatisfy({ $0.isASCII && $0.isLetter })) else {
            throw VaultError(.usage, "--allow \(text.debugDescription): \(method.debugDescription) is not an HTTP method or *", hint: hint)
        }
        guard path.hasPrefix("/"), !path.contains("?"), !path.contains("#"),
            !path.unicodeScalars.contains(where: { $0.value < 0x21 || $0.value == 0x7F })
        else {
            throw VaultError(.usage, "--allow \(text.debugDescription): the path must start with / and have no query, fragment or space", hint: hint)
        }
        let segments = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard !segments.contains(where: { $0 == "." || $0 == ".." }) else {
            throw VaultError(.usage, "--allow \(text.debugDescription): . and .. segments are not allowed", hint: hint)
        }
        self.method = method == "*" ? nil : method
        self.segments = segments == [""] ? [] : segments
    }

    package var description: String { "\(method ?? "*"):/\(segments.joined(separator: "/"))" }

    /// Whether the rule allows `method` on `path` (decoded segments below the API URL).
    package func allows(method: String, path: [String]) -> Bool {
        if let own = self.method, own != method { return false }
        return Self.match(segments[...], path[...])
    }

    private static func match(_ pattern: ArraySlice<String>, _ path: ArraySlice<String>) -> Bool {
        guard let first = pattern.first else { return path.isEmpty }
        if first == "**" {
            var rest = path
            while true {
                if match(pattern.dropFirst(), rest) { return true }
                guard !rest.isEmpty else { return false }
                rest = rest.dropFirst()
            }
        }
        guard let segment = path.first, glob(first, segment) else { return false }
        return match(pattern.dropFirst(), path.dropFirst())
    }

    /// `*` within one segment.
    private static func glob(_ pattern: String, _ text: String) -> Bool {
        let parts = pattern.split(separator: "*", omittingEmptySubsequences: false)
        guard parts.count > 1 else { return pattern == text }
        var rest = Substring(text)
        guard rest.hasPrefix(parts[0]) else { return false }
        rest = rest.dropFirst(parts[0].count)
        for (index, part) in parts.enumerated().dropFirst() {
            if index == parts.count - 1 { return part.isEmpty || (rest.count >= part.count && rest.hasSuffix(part)) }
            guard !part.isEmpty else { continue }
            guard let found = rest.range(of: part) else { return false }
            rest = rest[found.upperBound...]
        }
        return true
    }
}

/// What the proxy lets through: the request target (origin-form only,
/// inside the API URL's path, no dot segments in any encoding, not the token
/// endpoint, not the emulator's admin surface) and the `--allow` rules.
/// Pure: the server asks it about every request before anything is sent.
package struct ProxyPolicy: Sendable {
    /// The API URL's path, as segments (`/api` → `["api"]`).
    package let apiPath: [String]
    /// The token endpoint's path when it is on the API's host (refused even
    /// when the API path would contain it).
    package let tokenPath: [String]?
    /// Empty: everything below the API URL.
    package let rules: [ProxyAllowRule]

    package init(apiURL: URL, tokenURL: URL?, rules: [ProxyAllowRule]) {
        apiPath = Self.segments(of: apiURL.path)
        if let tokenURL, tokenURL.host?.lowercased() == apiURL.host?.lowercased(), tokenURL.port == apiURL.port {
            tokenPath = Self.segments(of: tokenURL.path)
        } else {
            tokenPath = nil
        }
        self.rules = rules
    }

    private static func segments(of path: String) -> [String] {
        path.split(separator: "/").map(String.init)
    }

    /// The request target to send upstream (`/api/…?…`, as the child wrote
    /// it), or why it is refused.
    package func check(method: String, target: String) -> Result<String, ProxyRefusal> {
        if method == "CONNECT" || method == "TRACE" {
            return .failure(ProxyRefusal(405, "VAULT_PROXY_METHOD_NOT_ALLOWED", "\(method) is not forwarded."))
        }
        guard target.hasPrefix("/") else {
            return .failure(.badRequest("Only a path is accepted as the request target (no absolute URL, authority or *)."))
        }
        guard !target.contains("#"), !target.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value >= 0x7F }) else {
            return .failure(.badRequest("The request target has a fragment, a space or a character outside ASCII."))
        }
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        var decoded: [String] = []
        let raw = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        for (index, segment) in raw.enumerated() {
            guard let text = Self.percentDecoded(segment) else {
                return .failure(.badRequest("The path has an invalid percent-encoding."))
            }
            if text.isEmpty && index == raw.count - 1 && index > 0 { continue }  // one trailing slash
            guard !text.isEmpty, text != ".", text != "..", !text.contains("/"), !text.contains("\\"), !text.contains("\0") else {
                return .failure(.forbidden("The path has an empty, . or .. segment (in any encoding); only paths below the API URL are forwarded."))
            }
            decoded.append(text)
        }
        if decoded.first?.hasPrefix("__emulator") == true {
            return .failure(.forbidden("The emulator's admin surface is not forwarded."))
        }
        let tokenEndpoint = zip(decoded, decoded.dropFirst()).contains { $0.lowercased() == "oauth" && $1.lowercased() == "token" }
        if tokenEndpoint || tokenPath.map({ decoded.starts(with: $0) }) == true {
            return .failure(.forbidden("The token endpoint is not forwarded: the proxy holds the token."))
        }
        guard decoded.count > apiPath.count, decoded.starts(with: apiPath) else {
            return .failure(.forbidden("Only paths below the API URL (/\(apiPath.joined(separator: "/"))/…) are forwarded."))
        }
        let below = Array(decoded.dropFirst(apiPath.count))
        if !rules.isEmpty && !rules.contains(where: { $0.allows(method: method, path: below) }) {
            return .failure(.forbidden("\(method) /\(below.joined(separator: "/")) is outside this proxy's --allow rules."))
        }
        return .success(target)
    }

    /// `nil` for a malformed `%` escape.
    static func percentDecoded(_ segment: Substring) -> String? {
        guard segment.contains("%") else { return String(segment) }
        var bytes: [UInt8] = []
        var iterator = Array(segment.utf8)[...]
        while let byte = iterator.popFirst() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard iterator.count >= 2, let high = hex(iterator.popFirst()!), let low = hex(iterator.popFirst()!) else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hex(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

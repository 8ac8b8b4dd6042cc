import Foundation
import NIOHTTP1
import TallyfyVaultCore

/// The per-run secret the child holds instead of the token: 256 random bits,
/// useless anywhere but at this proxy, for this run.
package struct ProxyCapability: Sendable {
    /// `tvproxy_` and 64 hex digits: recognisable in a log as not a Tallyfy
    /// token, and a valid bearer `token68`.
    package let value: String

    package init() {
        value = "tvproxy_" + Sodium.randomBytes(32).map { byte in
            let digits = Array("0123456789abcdef")
            return String([digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]])
        }.joined()
    }

    /// Compared in constant time (for equal lengths), so the time taken says
    /// nothing about how much of a guess was right.
    package func matches(_ presented: Substring) -> Bool {
        Array(presented.utf8).withUnsafeBytes { given in
            Array(value.utf8).withUnsafeBytes { own in Sodium.equal(given, own) }
        }
    }
}

/// Which of the child's headers reach Tallyfy, and which answers' headers
/// reach the child.
///
/// Refused (never forwarded): no `Authorization`, more than one, or one that
/// is not `Bearer <capability>` (401); a `Host` other than the proxy's own
/// address, or more than one (400: another host, or DNS rebinding); a
/// `Content-Length` with `Transfer-Encoding` is refused earlier, by the
/// HTTP decoder. Dropped: hop-by-hop headers (`Connection` and every header
/// it names, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
/// `Expect`), `Proxy-*`, and the forwarding headers (`Forwarded`,
/// `X-Forwarded-*`, `X-Real-IP`), which could make Tallyfy or a load
/// balancer in front of it believe another client or host. Added: the real
/// token, and `X-Tallyfy-Client: APIClient` when the child sent none.
///
/// Over the standing proxy's Unix socket, whose peer the kernel vouches for
/// (`SO_PEERCRED`: the proxy's own uid), no `Authorization` is needed; one
/// that is there must still be the capability (a wrong one, or the real
/// token, is refused as over TCP). `Host` is not compared there (`ownHosts`
/// `nil`): no browser reaches a Unix socket, so there is no DNS rebinding to
/// stop, and `Host` never reaches Tallyfy anyway; two are still refused.
package enum ProxyHeaders {
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "expect", "host", "content-length",
        "forwarded", "x-real-ip",
    ]

    /// The headers to send upstream (without the token, which is added per
    /// attempt), or the refusal.
    package static func upstream(
        _ headers: HTTPHeaders, capability: ProxyCapability, ownHosts: Set<String>?, requireHost: Bool,
        capabilityRequired: Bool = true
    ) -> Result<HTTPHeaders, ProxyRefusal> {
        guard headers["authorization"].count <= 1 else {
            return .failure(.badRequest("More than one Authorization header."))
        }
        if let authorization = headers.first(name: "authorization") {
            let parts = authorization.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
            guard parts.count == 2, parts[0].lowercased() == "bearer",
                capability.matches(parts[1].drop(while: { $0 == " " }))
            else { return .failure(.unauthenticated) }
        } else if capabilityRequired {
            return .failure(.unauthenticated)
        }

        let hosts = headers["host"]
        guard hosts.count <= 1 else { return .failure(.badRequest("More than one Host header.")) }
        if let host = hosts.first {
            guard ownHosts?.contains(host.lowercased()) ?? true else {
                return .failure(.badRequest("The Host header names another host than this proxy."))
            }
        } else if requireHost {
            return .failure(.badRequest("HTTP/1.1 requires a Host header."))
        }

        var named = Set<String>()
        for value in headers["connection"] {
            for name in value.split(separator: ",") { named.insert(name.trimmingCharacters(in: .whitespaces).lowercased()) }
        }
        var out = HTTPHeaders()
        for (name, value) in headers {
            let lower = name.lowercased()
            if lower == "authorization" || hopByHop.contains(lower) || named.contains(lower) || lower.hasPrefix("proxy-")
                || lower.hasPrefix("x-forwarded-")
            {
                continue
            }
            out.add(name: name, value: value)
        }
        if out["x-tallyfy-client"].allSatisfy({ $0.trimmingCharacters(in: .whitespaces).isEmpty }) {
            out.remove(name: "x-tallyfy-client")
            out.add(name: "X-Tallyfy-Client", value: "APIClient")
        }
        return .success(out)
    }

    /// An answer's headers for the child: without hop-by-hop headers (this
    /// connection's framing is the proxy's own).
    package static func downstream(_ headers: HTTPHeaders) -> HTTPHeaders {
        var named = Set<String>()
        for value in headers["connection"] {
            for name in value.split(separator: ",") { named.insert(name.trimmingCharacters(in: .whitespaces).lowercased()) }
        }
        var out = HTTPHeaders()
        for (name, value) in headers {
            let lower = name.lowercased()
            if ["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"].contains(lower)
                || lower.hasPrefix("proxy-") || named.contains(lower)
            {
                continue
            }
            out.add(name: name, value: value)
        }
        return out
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Checks the token and API URLs a profile stores before anything is sent.
///
/// The token request carries the client secret and every API call carries a
/// bearer token, so they must travel over TLS. The one exception is plain
/// `http://` to this machine's loopback interface, where nothing crosses a
/// network: that is how the bundled emulator and users' own integration
/// tests run. Userinfo (`user:pass@`), queries and fragments are refused
/// because the vault appends paths to these URLs and prints them in messages.
package enum EndpointURL {
    /// Returns the parsed URL, or throws `VaultError(.usage, …)` naming
    /// `name` (e.g. `--token-url`) and saying what is wrong.
    package static func validate(_ string: String, name: String) throws -> URL {
        let hint = "use an https:// URL such as https://go.tallyfy.com/api; "
            + "plain http:// is accepted only for loopback hosts (127.0.0.1, ::1, localhost)"
        guard !string.isEmpty else {
            throw VaultError(.usage, "\(name) is empty", hint: hint)
        }
        guard !string.unicodeScalars.contains(where: {
            $0.isWhitespaceOrNewline || $0.isControl
        }) else {
            throw VaultError(.usage, "\(name) contains whitespace", hint: hint)
        }
        guard let components = URLComponents(string: string), let url = URL(string: string) else {
            throw VaultError(.usage, "\(name) is not a valid URL", hint: hint)
        }
        guard let scheme = components.scheme?.lowercased() else {
            throw VaultError(.usage, "\(name) has no scheme (expected https://…)", hint: hint)
        }
        // Never echo a URL with userinfo: it may hold a password.
        guard components.user == nil, components.password == nil else {
            throw VaultError(.usage, "\(name) must not contain a user name or password", hint: hint)
        }
        guard let host = components.host, !host.isEmpty else {
            throw VaultError(.usage, "\(name) has no host", hint: hint)
        }
        guard components.query == nil, components.fragment == nil else {
            throw VaultError(.usage, "\(name) must not have a query (?…) or fragment (#…)", hint: hint)
        }
        if let port = components.port, !(1...65535).contains(port) {
            throw VaultError(.usage, "\(name) has an invalid port \(port)", hint: hint)
        }
        switch scheme {
        case "https":
            return url
        case "http":
            guard isLoopback(host: host) else {
                throw VaultError(
                    .usage,
                    "\(name) must use https:// (got http://\(host)): secrets and tokens would cross the network unencrypted",
                    hint: hint
                )
            }
            // The one name accepted must mean this machine here, too.
            if host.lowercased() == "localhost" && !resolvesToLoopbackOnly("localhost") {
                throw VaultError(
                    .usage,
                    "\(name) uses http://localhost, but localhost does not resolve to loopback addresses only on this machine",
                    hint: "use http://127.0.0.1 or http://[::1], or fix localhost in /etc/hosts"
                )
            }
            return url
        default:
            throw VaultError(.usage, "\(name) must use https:// (got \(scheme)://)", hint: hint)
        }
    }

    /// Whether every address `name` resolves to (through the system
    /// resolver: `/etc/hosts`, then DNS) is a loopback address; `false` when
    /// it does not resolve.
    static func resolvesToLoopbackOnly(_ name: String) -> Bool {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>? = nil
        guard getaddrinfo(name, nil, &hints, &result) == 0, let first = result else { return false }
        defer { freeaddrinfo(first) }
        var node: UnsafeMutablePointer<addrinfo>? = first
        while let entry = node {
            guard let address = entry.pointee.ai_addr else { return false }
            switch entry.pointee.ai_family {
            case AF_INET:
                let first = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { pointer in
                    withUnsafeBytes(of: pointer.pointee.sin_addr) { $0[0] }
                }
                guard first == 127 else { return false }
            case AF_INET6:
                let bytes = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { pointer in
                    withUnsafeBytes(of: pointer.pointee.sin6_addr) { Array($0) }
                }
                guard bytes[0..<15].allSatisfy({ $0 == 0 }) && bytes[15] == 1 else { return false }
            default:
                return false
            }
            node = entry.pointee.ai_next
        }
        return true
    }

    /// Exactly `localhost`, any address in 127.0.0.0/8, or `::1` (with or
    /// without brackets, in any spelling `inet_pton` accepts). Other names are
    /// not resolved: a name that merely points at 127.0.0.1 today may not
    /// tomorrow. `localhost.` (with the root's dot) is such a name: it is a
    /// fully qualified DNS name that resolvers send to DNS rather than
    /// answering from `/etc/hosts`, so it is not loopback.
    /// With `resolvingLocalhost`, `localhost` counts only when this machine
    /// resolves it to loopback addresses alone (the one name ever looked up).
    /// Plain-HTTP Tallyfy URLs and plain `etcd://` locations both use this.
    static func isLoopback(host rawHost: String, resolvingLocalhost: Bool = false) -> Bool {
        var host = rawHost.lowercased()
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host == "localhost" { return !resolvingLocalhost || resolvesToLoopbackOnly("localhost") }

        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            // s_addr is in network byte order: its first byte is the first octet.
            return withUnsafeBytes(of: &v4) { $0[0] } == 127
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            let bytes = withUnsafeBytes(of: &v6) { Array($0) }
            return bytes[0..<15].allSatisfy { $0 == 0 } && bytes[15] == 1
        }
        return false
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif
import Synchronization

/// Where a vault's sealed bytes live, as `--vault` (or `TALLYFY_VAULT_FILE`)
/// names it: a file path, or an etcd cluster (CONTRACT.md, "Round 2").
///
/// Anything that looks like a URL (`scheme://…`) is never taken as a file
/// path: `etcd://` and `etcds://` are etcd locations, every other scheme is
/// refused (64), so a typo never creates a folder named `etcd:`.
package enum VaultLocation: Sendable, Equatable {
    case file(String)
    case etcd(EtcdLocation)

    package init(parsing text: String, environment: [String: String]) throws {
        guard let separator = text.firstRange(of: "://") else {
            self = .file(text)
            return
        }
        let scheme = text[..<separator.lowerBound]
        let looksLikeScheme = !scheme.isEmpty && scheme.allSatisfy { $0.isLetter || $0.isNumber || "+.-".contains($0) }
        guard looksLikeScheme else {
            self = .file(text)
            return
        }
        switch scheme.lowercased() {
        case "etcd", "etcds": self = .etcd(try EtcdLocation(parsing: text, environment: environment))
        default:
            throw VaultError(.usage, "\(text.prefix(200)) is not a vault location: only file paths, etcd:// and etcds:// are",
                hint: "name a file (--vault /path/to/vault) or an etcd cluster (--vault etcd://127.0.0.1:2379/tallyfy/prod)")
        }
    }
}

/// An etcd cluster and the key prefix a vault lives under, with the TLS and
/// authentication settings `TALLYFY_VAULT_ETCD_*` give (the names follow
/// `etcdctl`'s `--cacert`, `--cert`, `--key`, `--user`).
package struct EtcdLocation: Sendable, Equatable, Hashable {
    /// `host:port` for each member, in the order given; IPv6 hosts in brackets.
    package var endpoints: [String]
    /// The key prefix without a trailing slash, starting with `/`: keys are `prefix + "/manifest"`, ….
    package var prefix: String
    /// `etcds://`: HTTPS, verified against `caFile` (else the system's CAs).
    package var tls: Bool
    package var caFile: String?
    package var certFile: String?
    package var keyFile: String?
    package var user: String?
    package var passwordFile: String?

    /// The location as written, without credentials: shown in messages and
    /// used to name this machine's cache of it.
    package var text: String { "\(tls ? "etcds" : "etcd")://\(endpoints.joined(separator: ","))\(prefix)" }

    package init(parsing text: String, environment: [String: String]) throws {
        func bad(_ why: String) -> VaultError {
            VaultError(.usage, "\(text.prefix(200)) is not a valid etcd location: \(why)",
                hint: "write it as etcd://HOST:PORT[,HOST:PORT…]/PREFIX, e.g. etcd://127.0.0.1:2379/tallyfy/prod")
        }
        guard let separator = text.firstRange(of: "://") else { throw bad("no scheme") }
        tls = text[..<separator.lowerBound].lowercased() == "etcds"
        let rest = text[separator.upperBound...]
        guard let slash = rest.firstIndex(of: "/") else { throw bad("no key prefix after the endpoints") }
        let hosts = rest[..<slash]
        var path = String(rest[slash...])
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        guard path.count > 1 else { throw bad("the key prefix is empty") }
        guard path.utf8.count <= 512, path.allSatisfy({ $0.isASCII && !$0.isWhitespace && $0 != "?" && $0 != "#" }) else {
            throw bad("the key prefix must be printable ASCII without spaces, ? or #")
        }
        guard !hosts.contains("@") else { throw bad("credentials do not belong in the location; use TALLYFY_VAULT_ETCD_USER and TALLYFY_VAULT_ETCD_PASSWORD_FILE") }
        var endpoints: [String] = []
        for member in hosts.split(separator: ",", omittingEmptySubsequences: false) {
            guard let colon = member.lastIndex(of: ":"), let port = Int(member[member.index(after: colon)...]),
                (1...65535).contains(port)
            else { throw bad("each endpoint needs HOST:PORT") }
            let host = member[..<colon]
            guard !host.isEmpty, host.allSatisfy({ $0.isLetter || $0.isNumber || ".-[]:".contains($0) }) else {
                throw bad("a host name has characters a host cannot have")
            }
            endpoints.append(String(member))
        }
        guard !endpoints.isEmpty else { throw bad("no endpoint") }
        self.endpoints = endpoints
        prefix = path
        if !tls {
            for endpoint in endpoints where !Self.isLoopback(endpoint) {
                throw VaultError(.usage, "etcd://\(endpoint) would send the vault and etcd credentials unencrypted over the network",
                    hint: "use etcds:// with TALLYFY_VAULT_ETCD_CACERT for any etcd that is not on this machine (127.0.0.1, ::1)")
            }
        }
        func setting(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        caFile = setting("TALLYFY_VAULT_ETCD_CACERT")
        certFile = setting("TALLYFY_VAULT_ETCD_CERT")
        keyFile = setting("TALLYFY_VAULT_ETCD_KEY")
        user = setting("TALLYFY_VAULT_ETCD_USER")
        passwordFile = setting("TALLYFY_VAULT_ETCD_PASSWORD_FILE")
        if (certFile == nil) != (keyFile == nil) {
            throw VaultError(.usage, "TALLYFY_VAULT_ETCD_CERT and TALLYFY_VAULT_ETCD_KEY go together; only one is set",
                hint: "set both to the client certificate and its key, or neither")
        }
        if user != nil && passwordFile == nil {
            throw VaultError(.usage, "TALLYFY_VAULT_ETCD_USER is set without TALLYFY_VAULT_ETCD_PASSWORD_FILE",
                hint: "put the etcd user's password in a file only you can read and name it in TALLYFY_VAULT_ETCD_PASSWORD_FILE")
        }
    }

    /// The same rule as plain-HTTP Tallyfy URLs (`EndpointURL.isLoopback`):
    /// a literal 127.0.0.0/8 or ::1 address, or `localhost` when it resolves
    /// to loopback only. No other name is looked up: `127.0.0.1.nip.io`
    /// starts like a loopback address and is not one.
    static func isLoopback(_ endpoint: String) -> Bool {
        guard let colon = endpoint.lastIndex(of: ":") else { return false }
        return EndpointURL.isLoopback(host: String(endpoint[..<colon]), resolvingLocalhost: true)
    }
}

/// The sealed bytes of a remote location and the version they were read at.
package struct RemoteSnapshot: Sendable {
    package var bytes: Data
    /// Opaque to the store: what a conditional write compares against.
    package var revision: Int64

    package init(bytes: Data, revision: Int64) {
        self.bytes = bytes
        self.revision = revision
    }
}

/// What a read found: nothing, the revision the caller already has, or newer bytes.
package enum RemoteRead: Sendable {
    case missing
    case unchanged
    case current(RemoteSnapshot)
}

/// A held fleet-wide write lock; `release()` gives it back early (its lease
/// frees it anyway when the holder dies).
package protocol RemoteLock: Sendable {
    func release() async
}

/// Where the sealed bytes live when it is not a file: the small protocol an
/// etcd cluster implements (in `TallyfyVault`, which has the HTTP client).
/// `VaultStore` does everything above it: parsing, unlocking, the cache.
package protocol RemoteSealedBytes: Sendable {
    /// The current bytes; `.unchanged` (one small request) when they are
    /// still at `revision`, which a caller holding a copy passes.
    func read(ifChangedSince revision: Int64?) async throws -> RemoteRead
    /// Stores a new vault; refuses (64) when one is there already. Returns its revision.
    func create(_ bytes: Data) async throws -> Int64
    /// Takes the fleet-wide write lock, waiting up to `timeout` (then 75).
    func lock(timeout: Duration) async throws -> any RemoteLock
    /// Replaces the bytes if nothing changed since `snapshot` was read, else
    /// 75. Returns the new revision.
    func write(_ bytes: Data, replacing snapshot: RemoteSnapshot) async throws -> Int64
}

extension RemoteSealedBytes {
    /// The current bytes, or `nil` when no vault is there.
    package func read() async throws -> RemoteSnapshot? {
        if case .current(let snapshot) = try await read(ifChangedSince: nil) { return snapshot }
        return nil
    }
}

/// Makes the client for an etcd location. A program that has one gives it
/// to its stores (`VaultStore(path:lockTimeout:environment:remote:)`): the
/// CLI and the agent give `EtcdClient.connector` from `TallyfyVault`. The
/// `tallyfy-vault` launcher, which has no HTTP stack, gives none: its stores
/// serve only from this machine's cache and it hands everything else to the
/// full CLI.
package typealias RemoteConnector = @Sendable (EtcdLocation) throws -> any RemoteSealedBytes

/// Whether a watch keeps this machine's cache of a remote vault current (the
/// agent's `VaultWatch`): while it does, reads take the cache, which the
/// watch refreshes on every change, instead of asking etcd each time. One
/// per store, shared by its copies; nothing else in the process sees it.
final class WatchState: Sendable {
    private let live = Mutex(false)

    var isLive: Bool { live.withLock { $0 } }

    func set(_ value: Bool) { live.withLock { $0 = value } }
}

/// How a remote location tells the user it stands in for a cluster.
enum RemoteLocations {
    /// One warning per process when the cache stands in for an unreachable cluster.
    private static let warned = Mutex(false)
    static func warnOnce(_ text: String) {
        let first = warned.withLock { seen in
            defer { seen = true }
            return !seen
        }
        if first {
            let line = Array(("tallyfy-vault: warning: " + text + "\n").utf8)
            _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        }
    }
}

/// This machine's private copy of a remote vault's sealed bytes (SECURITY.md,
/// "A vault on etcd"): `$XDG_CACHE_HOME/tallyfy-vault/etcd/NAME`, else
/// `~/.cache/…`, mode 0600 in a 0700 folder, NAME a hash of the location. It
/// holds `TVC1`, the etcd revision (8 bytes, big-endian), then exactly the
/// sealed bytes etcd holds; it lets `exec` hand out a fresh token without
/// asking etcd, lets a read skip the download when nothing changed, and
/// keeps reads working while etcd is down.
struct RemoteCache {
    let path: String

    init(location: EtcdLocation, environment: [String: String]) {
        let base: String
        if let cache = environment["XDG_CACHE_HOME"], cache.hasPrefix("/") {
            base = cache
        } else {
            base = (HomeFolder.path(environment: environment) ?? "") + "/.cache"
        }
        path = base + "/tallyfy-vault/etcd/" + Self.name(for: location.text)
    }

    /// FNV-1a 64 twice (forwards and over the reversed text): a stable,
    /// collision-unlikely file name, not a secret.
    static func name(for text: String) -> String {
        func fnv(_ bytes: some Sequence<UInt8>) -> UInt64 {
            bytes.reduce(0xcbf2_9ce4_8422_2325 as UInt64) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
        }
        let utf8 = Array(text.utf8)
        func hex(_ value: UInt64) -> String {
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        return hex(fnv(utf8)) + hex(fnv(utf8.reversed()))
    }

    var directory: String { URL(fileURLWithPath: path).deletingLastPathComponent().path }

    var exists: Bool { FileManager.default.fileExists(atPath: path) }

    static let magic = Data("TVC1".utf8)

    func read() throws -> RemoteSnapshot {
        try FileSafety.requireSafeDirectory(directory)
        return try decode(try FileSafety.readPrivate(path, what: "the cached copy of the vault"))
    }

    /// The revision and sealed bytes in the cache file's `data`.
    func decode(_ data: Data) throws -> RemoteSnapshot {
        guard data.count >= 12, data.prefix(4) == Self.magic else {
            throw VaultError(.corrupt, "the cached copy of the vault \(path) is damaged", hint: "remove it; the next read fetches it again")
        }
        let revision = data.dropFirst(4).prefix(8).reduce(Int64(0)) { ($0 << 8) | Int64($1) }
        return RemoteSnapshot(bytes: Data(data.dropFirst(12)), revision: revision)
    }

    /// Best effort: a cache that cannot be written costs speed, not data.
    ///
    /// Never goes back: every process of this machine stores what it read,
    /// and one whose read was overtaken (by the agent's, after a change on
    /// another machine) must not put the older vault back once the newer
    /// generation was recorded as seen, or the next read of the cache is
    /// refused as rolled back (65). Found by tools/partition-test. The
    /// compare and the replace happen under an exclusive `flock` of the
    /// cache's folder, so two processes storing at once can't interleave
    /// (nor remove each other's temporary file). The wait for that lock
    /// suspends rather than blocks, and gives up after `lockPatience` (a
    /// holder that stopped): the cache is then left as it is.
    func store(_ snapshot: RemoteSnapshot) async {
        var data = Self.magic
        data.append(contentsOf: (0..<8).reversed().map { UInt8(truncatingIfNeeded: snapshot.revision >> ($0 * 8)) })
        data.append(snapshot.bytes)
        do {
            try FileSafety.makeDirectory(directory)
            try FileSafety.requireSafeDirectory(directory)
            let folder = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard folder >= 0 else { return }
            defer { close(folder) }
            let deadline = ContinuousClock.now + Self.lockPatience
            while flock(folder, LOCK_EX | LOCK_NB) != 0 {
                guard errno == EWOULDBLOCK || errno == EINTR, ContinuousClock.now < deadline else { return }
                try await Task.sleep(for: .milliseconds(2))
            }
            if exists, let current = try? read(), current.revision > snapshot.revision { return }
            FileSafety.removeTemporaries(of: path)
            try FileSafety.atomicReplace(path, with: data)
        } catch {}
    }

    /// How long `store` waits for another process's store to finish.
    static let lockPatience = Duration.seconds(2)

    func modified() -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }
}

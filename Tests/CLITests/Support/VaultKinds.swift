import AsyncHTTPClient
import Foundation
import NIOCore
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Where a test's vault lives. The vault-command and Tallyfy-flow suites run
/// every test on both (`@Test(arguments: VaultKind.allCases)`): every command
/// must work the same on a file and on etcd.
enum VaultKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case file
    case etcd

    var testDescription: String { rawValue }
}

/// One 3-member etcd cluster on free loopback ports for the whole test
/// process, started on first use; each sandbox gets its own key prefix on
/// it, so tests running in parallel never see each other's vaults. The
/// cluster is stopped when this process exits, even if it crashes
/// (`tools/etcd-cluster start --owner`). EtcdTests, which kill members,
/// start clusters of their own.
enum SharedEtcd {
    private static let started: Result<EtcdCluster, any Error> = Result { try EtcdCluster.start(owner: getpid()) }

    static func cluster() throws -> EtcdCluster { try started.get() }
}

/// The keys of a vault on etcd, read and written through the cluster's v3
/// JSON gateway: what "the vault's bytes" means for an etcd location.
struct EtcdKeys {
    /// The members, tried in turn (a test may have killed one).
    let endpoints: [String]
    /// The vault's key prefix, without a trailing slash.
    let prefix: String

    /// `etcd://HOST:PORT,…/PREFIX` → its first endpoint and prefix.
    init?(location: String) {
        guard location.hasPrefix("etcd://") else { return nil }
        let rest = location.dropFirst("etcd://".count)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        endpoints = rest[..<slash].split(separator: ",").map(String.init)
        prefix = String(rest[slash...])
    }

    /// Every key under the prefix and its value, in key order, except the
    /// fleet lock (not vault content: taken and given back by every write,
    /// refused ones included).
    func all() throws -> [(key: String, value: Data)] {
        let answer = try call("/v3/kv/range", ["key": b64(prefix + "/"), "range_end": b64(prefix + "0")])
        let kvs = (answer["kvs"] as? [[String: Any]]) ?? []
        return kvs.map { kv in
            (String(decoding: unb64(kv["key"]), as: UTF8.self), unb64(kv["value"]))
        }.filter { $0.key != prefix + "/lock" }.sorted { $0.key < $1.key }
    }

    /// The keys and values as one byte string (key, NUL, value, NUL, …), so
    /// that byte-for-byte comparison and "is this secret anywhere in it" work
    /// as they do for a vault file. Empty when there is no vault.
    func stored() throws -> Data {
        var data = Data()
        for (key, value) in try all() {
            data.append(Data(key.utf8))
            data.append(0)
            data.append(value)
            data.append(0)
        }
        return data
    }

    struct Manifest: Codable {
        var format: String
        var generation: String
        var chunks: Int
        var size: Int
    }

    func manifest() throws -> Manifest {
        let value = try all().first { $0.key == prefix + "/manifest" }?.value
        return try JSONDecoder().decode(Manifest.self, from: try #require(value, "no manifest under \(prefix)"))
    }

    /// The sealed vault, put together from its chunks: what a vault file holds.
    func sealed() throws -> Data {
        let manifest = try manifest()
        let keys = try all()
        return (0..<manifest.chunks).reduce(into: Data()) { bytes, index in
            let name = prefix + "/chunks/\(manifest.generation)/" + String(format: "%05d", index)
            bytes.append(keys.first { $0.key == name }?.value ?? Data())
        }
    }

    /// Replaces the sealed vault with `bytes` (one chunk, a new generation),
    /// as someone with write access to etcd could: for tampering tests.
    func replaceSealed(with bytes: Data) throws {
        var manifest = try manifest()
        manifest.generation = "tampered-\(UUID().uuidString.prefix(8))"
        manifest.chunks = 1
        manifest.size = bytes.count
        try put(prefix + "/chunks/\(manifest.generation)/00000", bytes)
        try put(prefix + "/manifest", try JSONEncoder().encode(manifest))
    }

    /// Deletes every key of the vault, as losing it would.
    func removeAll() throws {
        _ = try call("/v3/kv/deleterange", ["key": b64(prefix + "/"), "range_end": b64(prefix + "0")])
    }

    func put(_ key: String, _ value: Data) throws {
        _ = try call("/v3/kv/put", ["key": b64(key), "value": value.base64EncodedString()])
    }

    /// A member that is down refuses at once: go to the next one rather than
    /// retrying the connection until the deadline (tests stop whole clusters).
    private static let http: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout = HTTPClient.Configuration.Timeout(connect: .seconds(2), read: .seconds(10))
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()

    private func call(_ path: String, _ body: [String: Any]) throws -> [String: Any] {
        var problem = "no member"
        for endpoint in endpoints {
            do {
                var request = try HTTPClient.Request(url: "http://\(endpoint)\(path)", method: .POST)
                request.body = .data(try JSONSerialization.data(withJSONObject: body))
                let response = try Self.http.execute(request: request, deadline: .now() + .seconds(10)).wait()
                let data = response.body.map { Data($0.readableBytesView) } ?? Data()
                if response.status == .ok, let json = try JSONSerialization.jsonObject(with: data) as? [String: Any] { return json }
                problem = "HTTP \(response.status.code)"
            } catch {
                problem = "\(error)"
            }
        }
        throw EtcdClusterError(message: "etcd \(path): \(problem)")
    }

    private func b64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }
    private func unb64(_ value: Any?) -> Data { (value as? String).flatMap { Data(base64Encoded: $0) } ?? Data() }
}

extension Sandbox {
    /// A sandbox whose vault location is a file (as `Sandbox()`) or a fresh
    /// prefix on the shared etcd cluster.
    convenience init(vault kind: VaultKind) throws {
        try self.init()
        if kind == .etcd {
            environment["TALLYFY_VAULT_FILE"] = try SharedEtcd.cluster().location("/tv/\(UUID().uuidString.prefix(13))")
        }
    }

    /// The vault location every run gets (`TALLYFY_VAULT_FILE`).
    var vaultLocation: String { environment["TALLYFY_VAULT_FILE"] ?? vaultPath }

    var kind: VaultKind { etcdKeys == nil ? .file : .etcd }

    /// The keys of the vault when it lives on etcd.
    var etcdKeys: EtcdKeys? { EtcdKeys(location: vaultLocation) }

    /// The sealed vault as a file would hold it (for etcd, its chunks put together).
    func sealedVault() throws -> Data {
        if let keys = etcdKeys { return try keys.sealed() }
        return try Data(contentsOf: URL(fileURLWithPath: vaultPath))
    }

    /// Overwrites the sealed vault behind the program's back (tampering tests).
    func replaceSealedVault(with bytes: Data) throws {
        if let keys = etcdKeys { return try keys.replaceSealed(with: bytes) }
        try bytes.write(to: URL(fileURLWithPath: vaultPath))
    }

    /// Deletes the vault behind the program's back (the file, or every key in etcd).
    func removeVault() throws {
        if let keys = etcdKeys { return try keys.removeAll() }
        try FileManager.default.removeItem(atPath: vaultPath)
    }

    /// This machine's cached copies of etcd vaults (`~/.cache/tallyfy-vault/etcd/…`).
    var etcdCacheFiles: [String] {
        let folder = root.appendingPathComponent(".cache/tallyfy-vault/etcd").path
        return ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).filter { !$0.hasPrefix(".") }
            .map { folder + "/" + $0 }
    }
}

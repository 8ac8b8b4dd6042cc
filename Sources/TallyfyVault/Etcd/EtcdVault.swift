import Foundation
import TallyfyVaultCore

/// A vault in etcd, laid out so that any size fits etcd's request limit
/// (1.5 MiB by default) and a change is one transaction (SECURITY.md, "A
/// vault on etcd"):
///
/// - `PREFIX/manifest`: which generation of chunks is current, how many, how
///   long (JSON, no secret);
/// - `PREFIX/chunks/GEN/00000`, `…/00001`, …: the sealed vault bytes, exactly
///   as a vault file holds them, cut in pieces of at most 768 KiB;
/// - `PREFIX/lock`: the fleet-wide write lock, attached to a lease.
///
/// A write puts the new generation's chunks first (invisible: no manifest
/// names them), then one transaction, conditioned on the manifest's
/// `mod_revision` as read, puts the manifest and the last chunk and deletes
/// every other generation. A reader reads the manifest and then the chunks
/// at the manifest's revision, so it never mixes two generations.
struct EtcdVault: RemoteSealedBytes {
    static let chunkSize = 768 * 1024
    /// The largest vault kept in etcd: 64 MiB, the sealed root's own limit
    /// (a 10,000-user vault is about 1.6 MB). A manifest naming more, or
    /// chunks that do not add up to its size, is refused as corrupt (65)
    /// before anything is fetched; a bigger write is refused (64).
    static let maxVaultBytes = 64 << 20
    /// At most this many chunks: the largest vault, in 768 KiB chunks.
    static let maxChunks = (maxVaultBytes + chunkSize - 1) / chunkSize
    /// A whole read or write (every chunk) gives up after this long (69),
    /// however the time is spent: a member answering slowly but within each
    /// request's deadline cannot hold a client for minutes.
    static let wholeDeadline = Duration.seconds(15)
    /// The fleet lock's lease, in seconds: how long a holder that can no
    /// longer reach the cluster (cut off, on a minority's side, or dead)
    /// keeps everyone else waiting. Found by tools/partition-test: with 10 s,
    /// a machine cut from etcd just after taking the lock held it past the
    /// moment the fleet had to renew a 12-second token, and nobody had a
    /// valid one. A live holder renews the lease every second at every
    /// member, so only a holder that reaches none of them for 3 s loses it
    /// (its write, conditioned on the revision it read, then fails: nothing
    /// is lost). etcd raises a TTL below its minimum (1.5 s with its default
    /// timings) to that minimum.
    static let lockTTL = 3
    static let manifestFormat = "tallyfy-vault-etcd-1"

    let location: EtcdLocation
    let gateway: EtcdGateway

    /// A vault on this process's one gateway to its cluster
    /// (`EtcdGateway.shared(for:)`), so every operation of a command or an
    /// agent shares one login and one HTTP client.
    init(location: EtcdLocation) throws {
        self.location = location
        gateway = try EtcdGateway.shared(for: location)
    }

    /// A vault whose gateway talks through `transport` (the fuzz target's canned answers).
    init(location: EtcdLocation, gateway: EtcdGateway) {
        self.location = location
        self.gateway = gateway
    }

    var manifestKey: String { location.prefix + "/manifest" }
    var lockKey: String { location.prefix + "/lock" }
    var chunksRoot: String { location.prefix + "/chunks/" }
    func chunkFolder(_ generation: String) -> String { chunksRoot + generation + "/" }
    func chunkKey(_ generation: String, _ index: Int) -> String { chunkFolder(generation) + String(format: "%05d", index) }

    struct Manifest: Codable {
        var format: String
        var generation: String
        var chunks: Int
        var size: Int
    }

    func read(ifChangedSince known: Int64?) async throws -> RemoteRead {
        var attempts = 0
        let clock = ContinuousClock()
        let deadline = clock.now + Self.wholeDeadline
        while true {
            attempts += 1
            let answer = try await gateway.call("/v3/kv/range", ["key": b64(manifestKey)])
            guard let kv = (answer["kvs"] as? [[String: Any]])?.first else { return .missing }
            let modRevision = int64(kv["mod_revision"])
            if let known, known == modRevision { return .unchanged }
            let revision = int64((answer["header"] as? [String: Any])?["revision"])
            guard let manifest = try? JSONDecoder().decode(Manifest.self, from: unb64(kv["value"])),
                manifest.format == Self.manifestFormat, manifest.chunks >= 1, manifest.chunks <= Self.maxChunks,
                manifest.size >= 0, manifest.size <= Self.maxVaultBytes,
                manifest.chunks == max(1, (manifest.size + Self.chunkSize - 1) / Self.chunkSize)
            else {
                throw VaultError(.corrupt, "the manifest at \(manifestKey) in \(location.text) is not one this version writes",
                    hint: "check that nothing else writes under this prefix; restore the vault from a backup")
            }
            var bytes = Data()
            var missing = false
            for index in 0..<manifest.chunks {
                try checkDeadline(deadline, clock, "reading")
                let chunk = try await gateway.call("/v3/kv/range", ["key": b64(chunkKey(manifest.generation, index)), "revision": String(revision)])
                guard let value = (chunk["kvs"] as? [[String: Any]])?.first?["value"] else {
                    missing = true
                    break
                }
                bytes.append(unb64(value))
                guard bytes.count <= manifest.size else { break }  // more than the manifest says: incomplete, below
            }
            if !missing && bytes.count == manifest.size { return .current(RemoteSnapshot(bytes: bytes, revision: modRevision)) }
            if attempts >= 3 {
                throw VaultError(.corrupt, "the vault in \(location.text) is incomplete: its manifest names chunks that are not there",
                    hint: "restore the vault from a backup (`etcdctl snapshot` or `tallyfy-vault migrate`)")
            }
        }
    }

    private func checkDeadline(_ deadline: ContinuousClock.Instant, _ clock: ContinuousClock, _ doing: String) throws {
        guard clock.now < deadline else {
            throw VaultError(.unavailable, "etcd at \(location.text) is too slow: \(doing) the vault took more than \(Self.wholeDeadline)",
                hint: "check the cluster's health: `etcdctl --endpoints \(location.endpoints.joined(separator: ",")) endpoint health`")
        }
    }

    func create(_ bytes: Data) async throws -> Int64 {
        let generation = Self.newIdentifier()
        guard let revision = try await commit(bytes, generation: generation, condition: [
            "key": b64(manifestKey), "target": "CREATE", "result": "EQUAL", "create_revision": "0",
        ]) else {
            throw VaultError(.usage, "a vault exists already at \(location.text); refusing to overwrite it",
                hint: "use it as it is, or choose another prefix")
        }
        return revision
    }

    func write(_ bytes: Data, replacing snapshot: RemoteSnapshot) async throws -> Int64 {
        let generation = Self.newIdentifier()
        if let revision = try await commit(bytes, generation: generation, condition: [
            "key": b64(manifestKey), "target": "MOD", "result": "EQUAL", "mod_revision": String(snapshot.revision),
        ]) {
            return revision
        }
        throw VaultError(.tryLater, "the vault at \(location.text) was changed by someone else during this change; nothing was written",
            hint: "run the command again")
    }

    /// How long a write keeps trying while the cluster has no leader (a
    /// leader was killed, an election is under way: 1–3 s measured). Safe to
    /// repeat: every write is conditioned on the revision it replaces.
    static let writePatience = Duration.seconds(12)

    /// Puts the chunks, then the manifest in one conditioned transaction: the
    /// new revision, or `nil` when the condition failed (and the chunks are
    /// removed again).
    ///
    /// A transaction's answer can be lost while it is applied (the member
    /// asked dies, a leader change cuts the connection), and the gateway then
    /// sends it again to another member, where the condition now fails. So a
    /// failed condition is not taken at its word: when the manifest names this
    /// generation, it was this write that committed, and the chunks it names
    /// must stay.
    private func commit(_ bytes: Data, generation: String, condition: [String: Any]) async throws -> Int64? {
        guard bytes.count <= Self.maxVaultBytes else {
            throw VaultError(.usage, "the vault is \(bytes.count) bytes, more than the \(Self.maxVaultBytes >> 20) MiB a vault in etcd may hold",
                hint: "forget user tokens no longer needed (`tallyfy-vault users forget`), or keep this vault in a file")
        }
        let clock = ContinuousClock()
        let deadline = clock.now + Self.wholeDeadline
        var chunks: [Data] = stride(from: 0, to: max(bytes.count, 1), by: Self.chunkSize).map {
            bytes.subdata(in: $0..<min($0 + Self.chunkSize, bytes.count))
        }
        if chunks.isEmpty { chunks = [Data()] }
        for index in 0..<(chunks.count - 1) {
            try checkDeadline(deadline, clock, "writing")
            _ = try await gateway.call("/v3/kv/put", ["key": b64(chunkKey(generation, index)), "value": chunks[index].base64EncodedString()],
                patience: Self.writePatience)
        }
        let manifest = Manifest(format: Self.manifestFormat, generation: generation, chunks: chunks.count, size: bytes.count)
        let folder = chunkFolder(generation)
        TestHooks.beforeCommit(location.prefix)
        let answer = try await gateway.call("/v3/kv/txn", [
            "compare": [condition],
            "success": [
                ["request_put": ["key": b64(chunkKey(generation, chunks.count - 1)), "value": chunks[chunks.count - 1].base64EncodedString()]],
                ["request_put": ["key": b64(manifestKey), "value": try JSONEncoder().encode(manifest).base64EncodedString()]],
                // Every other generation: the one replaced, and any a crashed writer left.
                ["request_delete_range": ["key": b64(chunksRoot), "range_end": b64(folder)]],
                ["request_delete_range": ["key": b64(Self.prefixEnd(folder)), "range_end": b64(Self.prefixEnd(chunksRoot))]],
            ],
            // Read the manifest as it is, in the same transaction: whose generation won.
            "failure": [["request_range": ["key": b64(manifestKey)]]],
        ], patience: Self.writePatience)
        if answer["succeeded"] as? Bool == true { return int64((answer["header"] as? [String: Any])?["revision"]) }
        let responses = answer["responses"] as? [[String: Any]]
        let current = ((responses?.first?["response_range"] as? [String: Any])?["kvs"] as? [[String: Any]])?.first
        if let current, let named = try? JSONDecoder().decode(Manifest.self, from: unb64(current["value"])), named.generation == generation {
            return int64(current["mod_revision"])  // an earlier attempt of this very transaction committed
        }
        _ = try? await gateway.call("/v3/kv/deleterange", ["key": b64(folder), "range_end": b64(Self.prefixEnd(folder))])
        return nil
    }

    func lock(timeout: Duration) async throws -> any RemoteLock {
        func grantLease() async throws -> String {
            let grant = try await gateway.call("/v3/lease/grant", ["TTL": String(Self.lockTTL)])
            guard let lease = grant["ID"] as? String else {
                throw VaultError(.unavailable, "etcd at \(location.text) granted no lease for the vault lock")
            }
            return lease
        }
        var lease = try await grantLease()
        let owner = Self.newIdentifier()
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var pause = Duration.milliseconds(5)
        var leaseRenewed = clock.now
        while true {
            // The lease must outlive a long wait for another holder.
            if clock.now - leaseRenewed > .seconds(Self.lockTTL / 3) {
                let answer = try? await gateway.call("/v3/lease/keepalive", ["ID": lease])
                let left = int64((answer?["result"] as? [String: Any])?["TTL"])
                if left <= 0 { lease = try await grantLease() }
                leaseRenewed = clock.now
            }
            let answer: [String: Any]
            do {
                answer = try await gateway.call("/v3/kv/txn", [
                    "compare": [["key": b64(lockKey), "target": "CREATE", "result": "EQUAL", "create_revision": "0"]],
                    "success": [["request_put": ["key": b64(lockKey), "value": b64(owner), "lease": lease]]],
                    "failure": [["request_range": ["key": b64(lockKey)]]],
                ], patience: Self.writePatience)
            } catch let error as VaultError where error.kind == .unavailable && clock.now < deadline {
                // A transaction that outlasted the short lease (a long
                // election) is refused for it: a new lease, and again.
                let answer = try? await gateway.call("/v3/lease/keepalive", ["ID": lease])
                guard int64((answer?["result"] as? [String: Any])?["TTL"]) <= 0 else { throw error }
                lease = try await grantLease()
                leaseRenewed = clock.now
                continue
            }
            // Held by this owner after a failed compare: an earlier attempt
            // whose answer was lost (see `commit`) took it.
            let holder = ((answer["responses"] as? [[String: Any]])?.first?["response_range"] as? [String: Any]).flatMap {
                ($0["kvs"] as? [[String: Any]])?.first?["value"]
            }
            if answer["succeeded"] as? Bool == true || unb64(holder) == Data(owner.utf8) {
                return EtcdLock(vault: self, lease: lease, owner: owner)
            }
            if clock.now >= deadline {
                _ = try? await gateway.call("/v3/lease/revoke", ["ID": lease])
                throw VaultError(.tryLater, "another process is changing the vault at \(location.text) (its lock is held)",
                    hint: "try again; a lock whose holder died expires within \(Self.lockTTL) s (TALLYFY_VAULT_LOCK_TIMEOUT waits longer)")
            }
            // A little jitter keeps many waiting machines from polling in step.
            try await Task.sleep(for: min(pause + .microseconds(Int.random(in: 0...5000)), deadline - clock.now))
            pause = min(pause * 2, .milliseconds(100))
        }
    }

    static func newIdentifier() -> String {
        (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }

    /// The smallest key after every key that starts with `prefix`.
    static func prefixEnd(_ prefix: String) -> String {
        var bytes = Array(prefix.utf8)
        bytes[bytes.count - 1] += 1  // prefixes end in "/", never 0xff
        return String(decoding: bytes, as: UTF8.self)
    }
}

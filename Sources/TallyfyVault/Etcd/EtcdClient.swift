import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization
import TallyfyVaultCore

/// Lets this process keep vaults in etcd (`--vault etcd://…`).
///
/// The client speaks etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
/// `/v3/lease/*`) over AsyncHTTPClient, which this module already uses for
/// Tallyfy: no generated gRPC code, no second HTTP/2 stack, and every call is
/// one small JSON request a person can reproduce with `curl` (README, "Many
/// machines: a vault on etcd").
package enum EtcdClient {
    /// Installs the etcd client for every `VaultStore` in this process. The
    /// CLI calls it at start; a Swift program that imports `TallyfyVault`
    /// calls it once before using an etcd location.
    package static func install() {
        RemoteLocations.install { location in try EtcdVault(location: location) }
    }
}

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

    init(location: EtcdLocation) throws {
        self.location = location
        gateway = try EtcdGateway(location: location)
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

    func read(ifChangedSince known: Int64?) throws -> RemoteRead {
        var attempts = 0
        let clock = ContinuousClock()
        let deadline = clock.now + Self.wholeDeadline
        while true {
            attempts += 1
            let answer = try gateway.call("/v3/kv/range", ["key": b64(manifestKey)])
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
                let chunk = try gateway.call("/v3/kv/range", ["key": b64(chunkKey(manifest.generation, index)), "revision": String(revision)])
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

    func create(_ bytes: Data) throws -> Int64 {
        let generation = Self.newIdentifier()
        guard let revision = try commit(bytes, generation: generation, condition: [
            "key": b64(manifestKey), "target": "CREATE", "result": "EQUAL", "create_revision": "0",
        ]) else {
            throw VaultError(.usage, "a vault exists already at \(location.text); refusing to overwrite it",
                hint: "use it as it is, or choose another prefix")
        }
        return revision
    }

    func write(_ bytes: Data, replacing snapshot: RemoteSnapshot) throws -> Int64 {
        let generation = Self.newIdentifier()
        if let revision = try commit(bytes, generation: generation, condition: [
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
    private func commit(_ bytes: Data, generation: String, condition: [String: Any]) throws -> Int64? {
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
            _ = try gateway.call("/v3/kv/put", ["key": b64(chunkKey(generation, index)), "value": chunks[index].base64EncodedString()],
                patience: Self.writePatience)
        }
        let manifest = Manifest(format: Self.manifestFormat, generation: generation, chunks: chunks.count, size: bytes.count)
        let folder = chunkFolder(generation)
        TestHooks.beforeCommit(location.prefix)
        let answer = try gateway.call("/v3/kv/txn", [
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
        _ = try? gateway.call("/v3/kv/deleterange", ["key": b64(folder), "range_end": b64(Self.prefixEnd(folder))])
        return nil
    }

    func lock(timeout: Duration) throws -> any RemoteLock {
        func grantLease() throws -> String {
            let grant = try gateway.call("/v3/lease/grant", ["TTL": String(Self.lockTTL)])
            guard let lease = grant["ID"] as? String else {
                throw VaultError(.unavailable, "etcd at \(location.text) granted no lease for the vault lock")
            }
            return lease
        }
        var lease = try grantLease()
        let owner = Self.newIdentifier()
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var pause = Duration.milliseconds(5)
        var leaseRenewed = clock.now
        while true {
            // The lease must outlive a long wait for another holder.
            if clock.now - leaseRenewed > .seconds(Self.lockTTL / 3) {
                let answer = try? gateway.call("/v3/lease/keepalive", ["ID": lease])
                let left = int64((answer?["result"] as? [String: Any])?["TTL"])
                if left <= 0 { lease = try grantLease() }
                leaseRenewed = clock.now
            }
            let answer: [String: Any]
            do {
                answer = try gateway.call("/v3/kv/txn", [
                    "compare": [["key": b64(lockKey), "target": "CREATE", "result": "EQUAL", "create_revision": "0"]],
                    "success": [["request_put": ["key": b64(lockKey), "value": b64(owner), "lease": lease]]],
                    "failure": [["request_range": ["key": b64(lockKey)]]],
                ], patience: Self.writePatience)
            } catch let error as VaultError where error.kind == .unavailable && clock.now < deadline {
                // A transaction that outlasted the short lease (a long
                // election) is refused for it: a new lease, and again.
                let answer = try? gateway.call("/v3/lease/keepalive", ["ID": lease])
                guard int64((answer?["result"] as? [String: Any])?["TTL"]) <= 0 else { throw error }
                lease = try grantLease()
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
                _ = try? gateway.call("/v3/lease/revoke", ["ID": lease])
                throw VaultError(.tryLater, "another process is changing the vault at \(location.text) (its lock is held)",
                    hint: "try again; a lock whose holder died expires within \(Self.lockTTL) s (TALLYFY_VAULT_LOCK_TIMEOUT waits longer)")
            }
            // A little jitter keeps many waiting machines from polling in step.
            nap(min(pause + .microseconds(Int.random(in: 0...5000)), deadline - clock.now))
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

/// The fleet-wide lock: a key attached to a lease that is kept alive while
/// held, so a holder that dies frees it within the lease's TTL.
final class EtcdLock: RemoteLock, @unchecked Sendable {
    let vault: EtcdVault
    let lease: String
    let owner: String
    private let keepAlive: RepeatedTask?
    private let loop: any EventLoop

    init(vault: EtcdVault, lease: String, owner: String) {
        self.vault = vault
        self.lease = lease
        self.owner = owner
        let gateway = vault.gateway
        let every = TimeAmount.seconds(Int64(EtcdVault.lockTTL / 3))
        loop = gateway.http.eventLoopGroup.next()
        keepAlive = loop.scheduleRepeatedTask(initialDelay: every, delay: every) { _ in
            // To every member: one that hangs (paused, cut off) must not
            // cost the lease while the others would have kept it.
            gateway.sendToEveryMember("/v3/lease/keepalive", ["ID": lease])
        }
    }

    func release() {
        // Waits until the loop has dropped the task (and the gateway it
        // holds): a keep-alive can't run after release, and nothing of this
        // lock outlives it (LeakSanitizer found the task still held after
        // a plain cancel, with the gateway, in the etcd fuzz target).
        let cancelled = loop.makePromise(of: Void.self)
        keepAlive?.cancel(promise: cancelled)
        try? cancelled.futureResult.wait()
        let gateway = vault.gateway
        _ = try? gateway.call("/v3/kv/txn", [
            "compare": [["key": b64(vault.lockKey), "target": "VALUE", "result": "EQUAL", "value": b64(owner)]],
            "success": [["request_delete_range": ["key": b64(vault.lockKey)]]],
            "failure": [] as [Any],
        ])
        gateway.send("/v3/lease/revoke", ["ID": lease])
    }
}

/// One cluster's JSON gateway: tries the members in turn, starting with the
/// last one that answered, and turns etcd's answers into `VaultError`s.
final class EtcdGateway: Sendable {
    let location: EtcdLocation
    let http: HTTPClient
    /// The member that last answered, per cluster, for the whole process:
    /// every operation of a command or an agent makes a gateway of its own,
    /// and each used to start again at the first member. Found by
    /// tools/partition-test: with the first member cut off, every write of
    /// an agent first waited 3 s for it (a lease, then the lock), and a
    /// renewal due 3 s before a short-lived token's end came too late.
    private static let lastAnswered = Mutex<[String: Int]>([:])
    private var preferredKey: String { location.endpoints.joined(separator: ",") }
    private var preferred: Int {
        get { Self.lastAnswered.withLock { $0[preferredKey] ?? 0 } }
        set { Self.lastAnswered.withLock { $0[preferredKey] = newValue } }
    }
    private let token: Mutex<String?>
    /// Carries a request to a member, when not `http` (the fuzz target).
    private let transport: EtcdTransport?
    /// Waits between rounds over the members (`nap`; nothing in the fuzz target).
    private let pause: @Sendable (Duration) -> Void

    /// A request that a member has not answered in this time is sent to the next.
    static let deadline = TimeAmount.seconds(3)
    /// The largest answer read from etcd: a chunk (768 KiB, 1 MiB in base64)
    /// and its JSON fit well; anything bigger is refused as it arrives,
    /// never held in memory whole.
    static let maxAnswerBytes = 2 << 20

    init(location: EtcdLocation, transport: EtcdTransport? = nil, pause: @escaping @Sendable (Duration) -> Void = nap) throws {
        self.location = location
        http = try Self.client(for: location)
        token = Mutex(nil)
        self.transport = transport
        self.pause = pause
    }

    var scheme: String { location.tls ? "https" : "http" }

    /// Sends and forgets (lease keep-alives and revokes).
    func send(_ path: String, _ body: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: body) else { return }
        let endpoint = location.endpoints[preferred % location.endpoints.count]
        if let transport { _ = try? transport(endpoint, path, data); return }
        guard let request = try? request(path, data, endpoint: endpoint) else { return }
        _ = http.execute(request: request, deadline: .now() + Self.deadline)
    }

    /// Sends and forgets, to every member at once (the lock's keep-alives).
    func sendToEveryMember(_ path: String, _ body: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: body) else { return }
        for endpoint in location.endpoints {
            if let transport { _ = try? transport(endpoint, path, data); continue }
            guard let request = try? request(path, data, endpoint: endpoint) else { continue }
            _ = http.execute(request: request, deadline: .now() + Self.deadline)
        }
    }

    private func request(_ path: String, _ body: Data, endpoint: String) throws -> HTTPClient.Request {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        // etcd 3.4's gateway wants the bare token, no "Bearer ".
        if let token = token.withLock({ $0 }) { headers.add(name: "Authorization", value: token) }
        return try HTTPClient.Request(url: "\(scheme)://\(endpoint)\(path)", method: .POST, headers: headers, body: .data(body))
    }

    /// One request to the first member that serves it; with `patience`,
    /// tried again for up to that long while members answer but cannot serve
    /// (no leader: one was killed, an election is under way, 1–3 s measured).
    /// Patience only for requests that are safe to repeat; a cluster whose
    /// every member refuses connections fails at once.
    func call(_ path: String, _ body: [String: Any], patience: Duration = .zero) throws -> [String: Any] {
        let clock = ContinuousClock()
        let deadline = clock.now + patience
        var pause = Duration.milliseconds(50)
        while true {
            do {
                return try callOnce(path, body)
            } catch let problem as NoServingMember where problem.reachable && clock.now + pause < deadline {
                self.pause(pause)  // between rounds over the members, while a leader is elected
                pause = min(pause * 2, .milliseconds(500))
            } catch let problem as NoServingMember {
                throw problem.error
            }
        }
    }

    private func callOnce(_ path: String, _ body: [String: Any]) throws -> [String: Any] {
        if location.user != nil, token.withLock({ $0 }) == nil { try authenticate() }
        do {
            return try attempt(path, body)
        } catch let error as GatewayRefusal where error.code == 16 && location.user != nil {
            try authenticate()  // the token expired (etcd's --auth-token-ttl)
            return try attempt(path, body)
        } catch let error as GatewayRefusal {
            throw error.vaultError(location)
        }
    }

    /// The `Authorization` header's value for a request made outside
    /// `call` (a watch): etcd's token for the configured user, or `nil`.
    func authorization() throws -> String? {
        guard location.user != nil else { return nil }
        if let token = token.withLock({ $0 }) { return token }
        do {
            try authenticate()
        } catch let problem as NoServingMember {
            throw problem.error
        }
        return token.withLock { $0 }
    }

    /// Forgets etcd's token, so the next request authenticates again (a watch refused with 401).
    func forgetToken() { token.withLock { $0 = nil } }

    private func authenticate() throws {
        guard let user = location.user, let file = location.passwordFile else { return }
        var info = stat()
        if stat(file, &info) == 0, info.st_mode & 0o077 != 0 {
            throw VaultError(.refused, "TALLYFY_VAULT_ETCD_PASSWORD_FILE \(file) can be read by other users (mode \(String(info.st_mode & 0o777, radix: 8)))",
                hint: "run `chmod 600 \(file)`")
        }
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw VaultError(.configuration, "could not read TALLYFY_VAULT_ETCD_PASSWORD_FILE \(file)",
                hint: "put the etcd user's password in that file, readable only by you")
        }
        var password = text
        while password.hasSuffix("\n") || password.hasSuffix("\r") { password.removeLast() }
        token.withLock { $0 = nil }
        do {
            let answer = try attempt("/v3/auth/authenticate", ["name": user, "password": password])
            guard let value = answer["token"] as? String else {
                throw VaultError(.refused, "etcd at \(location.text) gave no token to user \(user)",
                    hint: "check that authentication is enabled on the cluster (`etcdctl auth enable`)", cause: .etcdRefusedAccess)
            }
            token.withLock { $0 = value }
        } catch let error as GatewayRefusal {
            throw VaultError(.refused, "etcd at \(location.text) refused user \(user): \(error.message)",
                hint: "check TALLYFY_VAULT_ETCD_USER and the password in TALLYFY_VAULT_ETCD_PASSWORD_FILE", cause: .etcdRefusedAccess)
        }
    }

    /// One request, to each member in turn until one answers.
    private func attempt(_ path: String, _ body: [String: Any]) throws -> [String: Any] {
        let data = try JSONSerialization.data(withJSONObject: body)
        let count = location.endpoints.count
        let start = preferred
        var lastProblem = "no member answered"
        var tlsProblem: String?
        var reachable = false  // some member answered or took the request, and could not serve it
        for step in 0..<count {
            let index = (start + step) % count
            let endpoint = location.endpoints[index]
            let status: UInt
            let buffer: Data
            do {
                if let transport {
                    (status, buffer) = try transport(endpoint, path, data)
                } else {
                    let request = try request(path, data, endpoint: endpoint)
                    let response = try http.execute(request: request, delegate: ResponseAccumulator(request: request, maxBodySize: Self.maxAnswerBytes),
                        deadline: .now() + Self.deadline).wait()
                    status = response.status.code
                    buffer = response.body.map { Data($0.readableBytesView) } ?? Data()
                }
            } catch {
                // Matched by type, never by text. A server that rejects the
                // client certificate closes the connection during the
                // handshake: over TLS, a closed connection (not a refused
                // one) is taken as a TLS refusal.
                if error is NIOSSLError || error is NIOSSLExtraError || error is BoringSSLError
                    || (location.tls && (error as? HTTPClientError) == .remoteConnectionClosed)
                {
                    tlsProblem = String(describing: error)
                }
                lastProblem = "\(endpoint): \(Self.describe(error))"
                if !lastProblem.hasSuffix("connection refused") { reachable = true }
                continue
            }
            let json = (try? JSONSerialization.jsonObject(with: buffer)) as? [String: Any] ?? [:]
            if status == 200 && TestHooks.loseAnswer(path, data) {
                lastProblem = "\(endpoint): the answer was lost (test hook)"
                reachable = true
                continue
            }
            if status == 200 {
                preferred = index
                return json
            }
            let code = (json["code"] as? Int) ?? 0
            let message = ((json["message"] ?? json["error"]) as? String) ?? "HTTP \(status)"
            // 14 unavailable (no leader, leader changed), 4 deadline: another member may do.
            if status == 503 || code == 14 || code == 4 || message.contains("leader changed")
                || message.contains("timed out")
            {
                lastProblem = "\(endpoint): \(Self.clean(message))"
                reachable = true
                continue
            }
            throw GatewayRefusal(status: status, code: code, message: Self.clean(message))
        }
        if tlsProblem != nil {
            throw VaultError(.refused, "etcd at \(location.text) refused the TLS connection or this machine's certificate (\(lastProblem))",
                hint: "check TALLYFY_VAULT_ETCD_CACERT, TALLYFY_VAULT_ETCD_CERT and TALLYFY_VAULT_ETCD_KEY against the cluster's certificates",
                cause: .etcdRefusedTLS)
        }
        throw NoServingMember(reachable: reachable, error: VaultError(.unavailable, "etcd at \(location.text) is unreachable (\(lastProblem))",
            hint: "check that the cluster is running and reachable: `etcdctl --endpoints \(location.endpoints.joined(separator: ",")) endpoint health`"))
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .deadlineExceeded, .readTimeout, .connectTimeout: return "no answer within \(deadline.nanoseconds / 1_000_000_000) s"
            case .remoteConnectionClosed: return "connection closed"
            default: break
            }
        }
        if error is ResponseAccumulator.ResponseTooBigError { return "an answer over \(maxAnswerBytes >> 20) MiB" }
        let text = String(describing: error)
        if text.contains("refused") { return "connection refused" }
        return clean(text)
    }

    /// One line, bounded: etcd's messages name keys and states, never values.
    static func clean(_ text: String) -> String {
        String(text.split(whereSeparator: \.isNewline).first ?? "").prefix(200).description
    }

    /// One client per TLS setting for the life of the process (never shut down:
    /// the CLI exits, an agent keeps using it).
    private static let clients = Mutex<[String: HTTPClient]>([:])

    /// `streaming`: for watches, whose answer is a stream that may be quiet
    /// for hours, so it has no read timeout.
    static func client(for location: EtcdLocation, streaming: Bool = false) throws -> HTTPClient {
        let name = (streaming ? "watch\u{0}" : "")
            + (location.tls ? [location.caFile, location.certFile, location.keyFile].map { $0 ?? "" }.joined(separator: "\u{0}") : "plain")
        if let existing = clients.withLock({ $0[name] }) { return existing }
        // A member that is down refuses the connection: go to the next one at
        // once, rather than AHC's default of retrying until the deadline.
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout = HTTPClient.Configuration.Timeout(connect: .seconds(1), read: streaming ? nil : deadline)
        guard location.tls else { return remember(HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration), as: name) }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca = location.caFile {
            guard FileManager.default.isReadableFile(atPath: ca) else {
                throw VaultError(.configuration, "cannot read TALLYFY_VAULT_ETCD_CACERT \(ca)", hint: "name the PEM file of the cluster's CA")
            }
            tls.trustRoots = .file(ca)
        }
        if let cert = location.certFile, let key = location.keyFile {
            do {
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            } catch {
                throw VaultError(.configuration, "cannot read the etcd client certificate \(cert) or its key \(key)",
                    hint: "TALLYFY_VAULT_ETCD_CERT and TALLYFY_VAULT_ETCD_KEY name PEM files")
            }
        }
        configuration.tlsConfiguration = tls
        return remember(HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration), as: name)
    }

    /// Keeps the first client made under `name` (two threads may race to make one).
    private static func remember(_ client: HTTPClient, as name: String) -> HTTPClient {
        let kept = clients.withLock { clients in
            if let existing = clients[name] { return existing }
            clients[name] = client
            return client
        }
        if kept !== client { try? client.syncShutdown() }
        return kept
    }
}

/// Sends one request body to `path` at a member (`host:port`) and returns the
/// answer's HTTP status and body; throws when no answer came.
typealias EtcdTransport = @Sendable (_ endpoint: String, _ path: String, _ body: Data) throws -> (status: UInt, body: Data)

/// No member could serve a request; `reachable` when one at least answered
/// (an election is under way) rather than every one refusing connections.
struct NoServingMember: Error {
    let reachable: Bool
    let error: VaultError
}

/// Pauses this thread (the gateway's calls are blocking, like the file lock's wait).
func nap(_ duration: Duration) {
    let parts = max(duration, .zero).components
    var left = timespec(tv_sec: Int(parts.seconds), tv_nsec: Int(parts.attoseconds / 1_000_000_000))
    var asked = left
    while nanosleep(&asked, &left) != 0 && errno == EINTR { asked = left }
}

/// etcd answered, and said no (not a member being unavailable).
struct GatewayRefusal: Error {
    let status: UInt
    let code: Int
    let message: String

    func vaultError(_ location: EtcdLocation) -> VaultError {
        switch code {
        case 7, 16:
            let who = location.user.map { "user \($0)" } ?? "an unauthenticated client"
            return VaultError(.refused, "etcd at \(location.text) refused \(who) access to \(location.prefix): \(message)",
                hint: "grant the user's role readwrite on the prefix (`etcdctl role grant-permission ROLE --prefix readwrite \(location.prefix)/`)",
                cause: .etcdRefusedAccess)
        default:
            if message.contains("request is too large") {
                return VaultError(.io, "etcd at \(location.text) refused a request as too large: \(message)",
                    hint: "raise the cluster's --max-request-bytes")
            }
            return VaultError(.unavailable, "etcd at \(location.text) answered \(status): \(message)")
        }
    }
}

func b64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

func unb64(_ value: Any?) -> Data { (value as? String).flatMap { Data(base64Encoded: $0) } ?? Data() }

func int64(_ value: Any?) -> Int64 {
    if let text = value as? String { return Int64(text) ?? 0 }
    return (value as? NSNumber)?.int64Value ?? 0
}

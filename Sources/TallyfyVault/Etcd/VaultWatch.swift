import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
import TallyfyVaultCore

/// Keeps this machine's cache of a vault on etcd current for a long-lived
/// process (the agent): a change made on any machine (`rotate-secret`,
/// `rekey`, a renewal) reaches the cache as soon as etcd reports it, instead
/// of on the next poll.
///
/// It holds one etcd watch on the vault's manifest key (every change to a
/// vault commits a new manifest) through the v3 JSON gateway's `/v3/watch`,
/// which answers with a stream of JSON objects, one per line; the HTTP client
/// we already have reads it as a streamed response body. On every event it
/// re-reads the vault (`VaultStore.refreshCache`). While the watch is live the
/// store's reads (and its copies') take the cache without asking etcd
/// (`VaultStore.setWatchLive`); when the stream breaks (the member died,
/// lost its leader) reads ask etcd again, and the watch is opened anew on the
/// next member, catching up with one read once it is back.
///
/// A watch can also die without a word: a member whose host hangs, or a
/// connection a firewall forgot, leaves the stream open and silent. So a
/// task of its own also asks etcd every `checkInterval` while the watch
/// is live, which bounds how stale the cache can be to that interval, and
/// also repairs a cache that a slower reader in another process overwrote
/// with an older revision.
package final class VaultWatch: Sendable {
    /// The longest line of the watch stream read before the watch is
    /// dropped (and re-established): etcd's events are a few hundred bytes.
    static let maxLineBytes = 1 << 20
    private let tasks: Mutex<[Task<Void, Never>]>
    package static let checkInterval = Duration.seconds(2)

    /// Starts watching when `store` is a vault on etcd; `nil` for a file
    /// (whose readers re-read it: a rename is atomic and cheap to notice).
    package static func start(store: VaultStore, log: @escaping @Sendable (String) -> Void) -> VaultWatch? {
        guard case .etcd(let location)? = try? store.location(), let vault = try? EtcdVault(location: location),
            let client = try? EtcdGateway.client(for: location, streaming: true)
        else { return nil }
        let watch = VaultWatch()
        let stream = WatchStream(store: store, vault: vault, client: client, log: log)
        watch.tasks.withLock { $0 = [Task { await stream.run() }, Task { await Self.check(store: store, log: log) }] }
        return watch
    }

    /// The periodic check. Its requests suspend rather than block, so it
    /// holds none of the agent's few pool threads while etcd is slow.
    private static func check(store: VaultStore, log: @Sendable (String) -> Void) async {
        while (try? await Task.sleep(for: checkInterval)) != nil {
            guard store.isWatchLive else { continue }
            if (try? await store.refreshCache()) == true {
                log("the vault in etcd was newer than this machine's cache (found by the periodic check); the cache is up to date")
            }
        }
    }

    private init() { tasks = Mutex([]) }

    /// Ends the watch (reads ask etcd again) and waits until its requests
    /// have ended, before the process shuts its etcd clients down.
    package func stop() async {
        let running = tasks.withLock { $0 }
        for task in running { task.cancel() }
        for task in running { await task.value }
    }
}

/// One watch and its reconnections.
private struct WatchStream: Sendable {
    let store: VaultStore
    let vault: EtcdVault
    let client: HTTPClient
    let log: @Sendable (String) -> Void

    var location: EtcdLocation { vault.location }

    func run() async {
        var member = 0
        var pause = Duration.milliseconds(100)
        var lastProblem: String?
        while !Task.isCancelled {
            let endpoint = location.endpoints[member % location.endpoints.count]
            var establishedAt: ContinuousClock.Instant?
            do {
                try await follow(endpoint) {
                    // Established: from now on every change is reported.
                    establishedAt = .now
                    lastProblem = nil
                }
            } catch {
                if Task.isCancelled { break }
                let problem = Self.describe(error)
                // One line per new problem, not one per attempt while etcd is down.
                if problem != lastProblem { log("lost the watch on \(location.text) at \(endpoint): \(problem); reading from etcd until it is back") }
                lastProblem = problem
            }
            store.setWatchLive(false)
            if Task.isCancelled { break }
            // Back to a short pause only after a watch that lasted: a member
            // that accepts watches and ends them at once gets no tight loop.
            if let establishedAt, establishedAt.duration(to: .now) > .seconds(10) { pause = .milliseconds(100) }
            member += 1
            try? await Task.sleep(for: pause)  // a back-off between reconnections, not a wait for a change
            pause = min(pause * 2, .seconds(5))
        }
        store.setWatchLive(false)
    }

    /// Opens the watch at `endpoint` and follows it until it ends.
    private func follow(_ endpoint: String, established: () -> Void) async throws {
        var request = HTTPClientRequest(url: "\(vault.gateway.scheme)://\(endpoint)/v3/watch")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        // etcd ends the stream when this member loses its leader, so a member
        // cut off from the others is never trusted to report changes.
        request.headers.add(name: "Grpc-Metadata-hasleader", value: "true")
        let gateway = vault.gateway
        if let token = try await gateway.authorization() { request.headers.add(name: "Authorization", value: token) }
        let body = ["create_request": ["key": b64(vault.manifestKey)]]
        request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
        let response = try await client.execute(request, deadline: .distantFuture)
        guard response.status == .ok else {
            if response.status == .unauthorized { vault.gateway.forgetToken() }
            throw WatchEnded(reason: "etcd answered \(response.status.code)")
        }
        var lines = WatchLines()
        for try await chunk in response.body {
            for line in try lines.append(chunk.readableBytesView) {
                try await handle(line, endpoint: endpoint, established: established)
            }
        }
        // etcd's last word may come without a newline (`{"error":{…"no leader"}}`).
        try await handle(lines.rest, endpoint: endpoint, established: established)
        throw WatchEnded(reason: "the stream ended")
    }

    private func handle(_ line: Data, endpoint: String, established: () -> Void) async throws {
        let event = WatchEvent(line: line)
        if let reason = event.ended { throw WatchEnded(reason: reason) }
        if event.created {
            // Anything that changed before the watch began is read now.
            _ = try await store.refreshCache()
            store.setWatchLive(true)
            established()
            log("watching \(location.text) for changes (through \(endpoint))")
        }
        if let revision = event.changedAt {
            do {
                // Logged even when the periodic check got there first.
                _ = try await store.refreshCache()
                log("the vault changed in etcd (revision \(revision)); this machine's cache is up to date")
            } catch {
                // Not current: reads must ask etcd until a read succeeds.
                store.setWatchLive(false)
                throw error
            }
        }
    }

    static func describe(_ error: any Error) -> String {
        if let ended = error as? WatchEnded { return ended.reason }
        if let error = error as? VaultError { return error.message }
        return EtcdGateway.describe(error)
    }
}

struct WatchEnded: Error {
    let reason: String
}

/// The watch stream cut into lines, one JSON object each. An event is a few
/// hundred bytes; a "line" that runs past `VaultWatch.maxLineBytes` without
/// ending is not etcd, and ends the watch.
struct WatchLines {
    private var pending = Data()

    /// The lines `bytes` completes, in order.
    mutating func append(_ bytes: some Sequence<UInt8>) throws -> [Data] {
        pending.append(contentsOf: bytes)
        if pending.count > VaultWatch.maxLineBytes, !pending.contains(0x0A) {
            throw WatchEnded(reason: "a line of the watch stream is over \(VaultWatch.maxLineBytes >> 20) MiB")
        }
        var lines: [Data] = []
        while let newline = pending.firstIndex(of: 0x0A) {
            lines.append(Data(pending[pending.startIndex..<newline]))
            pending = Data(pending[pending.index(after: newline)...])
        }
        return lines
    }

    /// What came after the last newline.
    var rest: Data { pending }
}

/// What one line of the watch stream says: the watch ended (etcd's error, or
/// a cancel, with its reason in one line), it was created, or the manifest
/// changed (at the revision of its last event). Anything else is ignored.
struct WatchEvent: Equatable {
    var ended: String?
    var created = false
    var changedAt: Int64?

    init(line: Data) {
        guard let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any] else { return }
        if let error = object["error"] as? [String: Any] {
            ended = EtcdGateway.clean((error["message"] as? String) ?? "an error")
            return
        }
        guard let result = object["result"] as? [String: Any] else { return }
        if result["canceled"] as? Bool == true {
            ended = EtcdGateway.clean((result["cancel_reason"] as? String) ?? "canceled by etcd")
            return
        }
        created = result["created"] as? Bool == true
        if let events = result["events"] as? [[String: Any]], !events.isEmpty {
            changedAt = events.compactMap { ($0["kv"] as? [String: Any])?["mod_revision"] }.last.map(int64) ?? 0
        }
    }
}

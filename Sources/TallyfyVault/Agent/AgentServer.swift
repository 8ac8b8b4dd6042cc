import Foundation
import Synchronization
import TallyfyVaultCore

/// The agent: holds one vault's data key (never a passphrase or key file),
/// hands out tokens over a Unix socket to processes of its own uid, and
/// renews tokens in the background before they get close to expiry.
///
/// It keeps the vault it last opened, with the identity of its file
/// (`PinnedVault`), and answers a request whose sealed token is fresh enough
/// from it: one `stat` per request, nothing re-read or decrypted. Every
/// change by the CLI (`credentials set`, `rotate-secret`, `users forget`,
/// `rekey`, `keys remove`) replaces the file, so the next request re-opens
/// it and sees the change at once. When the key slots change its key no
/// longer opens the vault, and it forgets the key: clients fall back to
/// unlocking for themselves. Renewing runs the same code as the CLI:
/// `TokenBroker.grant` under the same vault lock and atomic replace, so it
/// is single-flight with every CLI process. docs/agent.md describes the
/// protocol.
///
/// Its parts, one file each: the socket and its threads
/// (`AgentServer+transport.swift`), the held vault (`+heldVault`), a
/// request to its answer (`+requests`) and background renewal (`+renewal`).
package final class AgentServer: Sendable {
    package struct Configuration: Sendable {
        package var socketPath: String
        /// The vault's resolved path; requests for any other vault are declined.
        package var vaultPath: String
        /// Forget the key after this long without a token request (nil: never).
        package var idleTimeout: TimeInterval?
        /// Forget the key this long after starting (nil: never).
        package var maxLifetime: TimeInterval?
        package var environment: [String: String]

        package init(socketPath: String, vaultPath: String, idleTimeout: TimeInterval?, maxLifetime: TimeInterval?,
            environment: [String: String])
        {
            self.socketPath = socketPath
            self.vaultPath = vaultPath
            self.idleTimeout = idleTimeout
            self.maxLifetime = maxLifetime
            self.environment = environment
        }
    }

    /// When a token is renewed and failures retried: the schedule
    /// `exec --keep-fresh` uses (a quarter of its life left, brought forward
    /// at random by up to a twentieth of it, so a fleet of agents started
    /// together does not renew in the same second).
    package static let schedule = RenewalSchedule.standard

    /// Threads that accept and serve connections (see `acceptLoop`).
    static let servingThreads = 4
    /// Clients slow to send their request wait on threads of their own, at
    /// most this many at once; more are dropped (and logged).
    static let slowClientLimit = 64

    struct State {
        var unlocker: VaultUnlocker?
        var lastUsed: Date
        var served = 0
        var renewals = 0
        var stopping = false
        var listener: Int32 = -1
        var slowClients = 0
        /// When each token is due for renewal, keyed by profile (and user),
        /// fixed once per token value so the jitter stays put.
        var due: [String: (token: String, at: Date)] = [:]
        /// After a failed renewal: not before this, and how many failed in a row.
        var retry: [String: (at: Date, attempt: Int)] = [:]
    }

    package let configuration: Configuration
    let store: VaultStore
    let startedAt: Date
    let state: Mutex<State>
    /// The vault as last opened with the held key, and its file. A lock of
    /// its own, so reading a file (which may hang on a network file system)
    /// never holds up `lock`, `stop` or `status`; dropped with the key.
    let held = Mutex<PinnedVault?>(nil)
    /// The opening of the vault under way (`withHeldVault`): requests that
    /// find the held vault stale meanwhile wait for it rather than each
    /// reading (for etcd without its watch, downloading) the vault again.
    let opening = Mutex<Task<PinnedVault?, Never>?>(nil)
    /// Renewals run one at a time: they all take the same vault lock anyway,
    /// and waiting here is asynchronous, where waiting for the lock blocks a
    /// thread of the small shared pool that every task of the agent needs.
    let renewalTurn = TakingTurns()
    let log: @Sendable (String) -> Void

    package init(configuration: Configuration, unlocker: VaultUnlocker, log: @escaping @Sendable (String) -> Void) {
        self.configuration = configuration
        store = VaultStore(path: configuration.vaultPath, lockTimeout: VaultStore.lockTimeout(environment: configuration.environment),
            environment: configuration.environment, remote: EtcdClient.connector)
        startedAt = VaultClock.now(environment: configuration.environment)
        state = Mutex(State(unlocker: unlocker, lastUsed: startedAt))
        self.log = log
    }

    var now: Date { VaultClock.now(environment: configuration.environment) }

    // MARK: - Running

    /// Listens, serves and renews until stopped (`agent stop`, SIGTERM,
    /// SIGINT); then forgets the key and removes the socket. `ready` runs once
    /// the socket accepts connections.
    package func run(ready: @Sendable () -> Void) async throws {
        // A client that hangs up before its answer must never end the agent:
        // writes say MSG_NOSIGNAL, and nothing else may raise SIGPIPE either.
        signal(SIGPIPE, SIG_IGN)
        let listener = try AgentSocket.listen(at: configuration.socketPath)
        state.withLock { $0.listener = listener }
        for _ in 0..<Self.servingThreads {
            let thread = Thread { [self] in acceptLoop(listener) }
            thread.stackSize = 1 << 20
            thread.start()
        }
        log("serving \(configuration.vaultPath) on \(configuration.socketPath) (pid \(getpid()))")
        ready()
        // A vault on etcd: changes from other machines reach the cache at once (VaultWatch.swift).
        let watch = VaultWatch.start(store: store, log: log)
        while !state.withLock({ $0.stopping }) {
            await tick()
            try? await Task.sleep(for: .milliseconds(250))
        }
        await watch?.stop()
        unlink(configuration.socketPath)
        close(listener)
        await TallyfyClient.shutdownShared()
        await EtcdClient.shutDown()
        log("stopped; the key is forgotten")
    }

    /// Forgets the key and ends `run` (from a signal handler's queue or `agent stop`).
    package func stop() {
        let listener = state.withLock {
            $0.unlocker = nil
            $0.stopping = true
            return $0.listener
        }
        dropHeldVault()
        // Wake accept() at once, so no request is served after this.
        if listener >= 0 { shutdown(listener, Int32(SHUT_RDWR)) }
    }
}

/// Runs one body at a time, in the order they asked; the others wait
/// without holding a thread.
actor TakingTurns {
    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    /// How many wait for their turn (for tests).
    var queued: Int { waiting.count }

    func run<T: Sendable>(_ body: @Sendable () async throws -> T) async rethrows -> T {
        if busy {
            await withCheckedContinuation { waiting.append($0) }
        } else {
            busy = true
        }
        defer {
            if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
        }
        return try await body()
    }
}

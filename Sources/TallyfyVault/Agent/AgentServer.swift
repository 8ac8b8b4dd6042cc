import Foundation
import Synchronization
import TallyfyVaultCore

/// The agent: holds one vault's data key (never a passphrase or key file),
/// hands out tokens over a Unix socket to processes of its own uid, and
/// renews tokens in the background before they get close to expiry.
///
/// It runs the same code as the CLI: `TokenBroker.grant` under the same vault
/// lock and atomic replace, so it is single-flight with every CLI process,
/// and it re-reads the vault for every request, so changes made by the CLI
/// (`credentials set`, `rotate-secret`, `users forget`) are seen at once. When
/// the key slots change (`keys add`/`remove`, `rekey`) its key no longer
/// opens the vault as it is, and it forgets the key: clients fall back to
/// unlocking for themselves. docs/agent.md describes the protocol.
public final class AgentServer: Sendable {
    public struct Configuration: Sendable {
        public var socketPath: String
        /// The vault's resolved path; requests for any other vault are declined.
        public var vaultPath: String
        /// Forget the key after this long without a token request (nil: never).
        public var idleTimeout: TimeInterval?
        /// Forget the key this long after starting (nil: never).
        public var maxLifetime: TimeInterval?
        public var environment: [String: String]

        public init(socketPath: String, vaultPath: String, idleTimeout: TimeInterval?, maxLifetime: TimeInterval?,
            environment: [String: String])
        {
            self.socketPath = socketPath
            self.vaultPath = vaultPath
            self.idleTimeout = idleTimeout
            self.maxLifetime = maxLifetime
            self.environment = environment
        }
    }

    /// A token is renewed when this share of its life is left (a quarter),
    /// plus up to a tenth of that again at random, so a fleet of agents
    /// started together does not renew in the same second.
    public static let renewalShare = 0.25
    public static let jitterShare = 0.1

    private struct State {
        var unlocker: VaultUnlocker?
        var lastUsed: Date
        var served = 0
        var renewals = 0
        var stopping = false
        var listener: Int32 = -1
        /// When each token is due for renewal, keyed by profile (and user),
        /// fixed once per token value so the jitter stays put.
        var due: [String: (token: String, at: Date)] = [:]
        /// After a failed renewal: not before this, and the next pause.
        var retry: [String: (at: Date, pause: TimeInterval)] = [:]
    }

    public let configuration: Configuration
    private let store: VaultStore
    private let startedAt: Date
    private let state: Mutex<State>
    private let log: @Sendable (String) -> Void

    public init(configuration: Configuration, unlocker: VaultUnlocker, log: @escaping @Sendable (String) -> Void) {
        self.configuration = configuration
        store = VaultStore(path: configuration.vaultPath, lockTimeout: VaultStore.lockTimeout(environment: configuration.environment))
        startedAt = VaultClock.now(environment: configuration.environment)
        state = Mutex(State(unlocker: unlocker, lastUsed: startedAt))
        self.log = log
    }

    private var now: Date { VaultClock.now(environment: configuration.environment) }

    // MARK: - Running

    /// Listens, serves and renews until stopped (`agent stop`, SIGTERM,
    /// SIGINT); then forgets the key and removes the socket. `ready` runs once
    /// the socket accepts connections.
    public func run(ready: @Sendable () -> Void) async throws {
        let listener = try AgentSocket.listen(at: configuration.socketPath)
        state.withLock { $0.listener = listener }
        let acceptor = Thread { [self] in acceptLoop(listener) }
        acceptor.stackSize = 1 << 20
        acceptor.start()
        log("serving \(configuration.vaultPath) on \(configuration.socketPath) (pid \(getpid()))")
        ready()
        // A vault on etcd: changes from other machines reach the cache at once (VaultWatch.swift).
        let watch = VaultWatch.start(store: store, log: log)
        defer { watch?.stop() }
        while !state.withLock({ $0.stopping }) {
            await tick()
            try? await Task.sleep(for: .milliseconds(250))
        }
        unlink(configuration.socketPath)
        close(listener)
        await TallyfyClient.shutdownShared()
        log("stopped; the key is forgotten")
    }

    /// Forgets the key and ends `run` (from a signal handler's queue or `agent stop`).
    public func stop() {
        let listener = state.withLock {
            $0.unlocker = nil
            $0.stopping = true
            return $0.listener
        }
        // Wake accept() at once, so no request is served after this.
        if listener >= 0 { shutdown(listener, Int32(SHUT_RDWR)) }
    }

    /// Forgets the key and keeps answering "locked".
    public func lock(reason: String) {
        let wasUnlocked = state.withLock { state -> Bool in
            defer { state.unlocker = nil }
            return state.unlocker != nil
        }
        if wasUnlocked { log("forgot the key: \(reason)") }
    }

    private func acceptLoop(_ listener: Int32) {
        while !state.withLock({ $0.stopping }) {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else {
                if errno == EINTR || errno == ECONNABORTED { continue }
                usleep(10_000)
                continue
            }
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            let thread = Thread { [self] in serve(connection) }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    // MARK: - Serving one connection

    private func serve(_ connection: Int32) {
        defer { close(connection) }
        AgentSocket.setTimeouts(connection, seconds: AgentProtocol.ioTimeout)
        guard let peer = AgentSocket.peerCredentials(connection), peer.uid == geteuid() else {
            let who = AgentSocket.peerCredentials(connection).map { "uid \($0.uid) (pid \($0.pid))" } ?? "an unknown peer"
            log("refused a connection from \(who): the agent serves uid \(geteuid()) only")
            return
        }
        let request: AgentProtocol.Request
        do {
            request = try AgentProtocol.receive(AgentProtocol.Request.self, from: connection, maxLength: AgentProtocol.maxRequestLength)
        } catch {
            log("dropped a connection from pid \(peer.pid): \(error)")
            return
        }
        let answer: AgentProtocol.Answer
        if request.version != AgentProtocol.version {
            answer = .failure("bad-request", "this agent speaks protocol version \(AgentProtocol.version)")
        } else {
            answer = blockingAnswer(request)
        }
        try? AgentProtocol.send(answer, to: connection)
        if request.op == .stop { stop() }
    }

    /// Runs the async answer on the concurrency pool while this connection's
    /// own thread waits, so a slow renewal never holds the accept loop.
    private func blockingAnswer(_ request: AgentProtocol.Request) -> AgentProtocol.Answer {
        let result = Mutex<AgentProtocol.Answer?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            let answer = await self.answer(request)
            result.withLock { $0 = answer }
            done.signal()
        }
        done.wait()
        return result.withLock { $0 } ?? .failure("failed", "internal error")
    }

    private func answer(_ request: AgentProtocol.Request) async -> AgentProtocol.Answer {
        switch request.op {
        case .status:
            return AgentProtocol.Answer(ok: true, status: status())
        case .lock:
            lock(reason: "asked to by `agent lock`")
            return AgentProtocol.Answer(ok: true, status: status())
        case .stop:
            log("asked to stop")
            return AgentProtocol.Answer(ok: true)
        case .token:
            return await token(request)
        }
    }

    private func status() -> AgentProtocol.Status {
        state.withLock {
            AgentProtocol.Status(vault: configuration.vaultPath, locked: $0.unlocker == nil, pid: getpid(),
                startedAt: startedAt.timeIntervalSince1970, idleTimeout: configuration.idleTimeout,
                maxLifetime: configuration.maxLifetime, served: $0.served, renewals: $0.renewals)
        }
    }

    private func token(_ wire: AgentProtocol.Request) async -> AgentProtocol.Answer {
        guard wire.vault == configuration.vaultPath else {
            return .failure("other-vault", "this agent holds \(configuration.vaultPath) only")
        }
        guard let profile = wire.profile, let minimum = wire.minimumLifetime, minimum.isFinite, minimum >= 0 else {
            return .failure("bad-request", "a token request needs a profile and a minimum lifetime")
        }
        let renewal: TokenRequest.Renewal
        switch wire.renewal {
        case "whenStaleStrictly": renewal = .whenStaleStrictly
        case "never": renewal = .never
        default: renewal = .whenStale
        }
        guard let broker = openBroker() else { return .failure("locked", "the agent holds no key") }
        state.withLock {
            $0.lastUsed = now
            $0.served += 1
        }
        do {
            let grant = try await broker.grant(
                TokenRequest(profile: profile, user: wire.user, minimumLifetime: minimum, renewal: renewal))
            return AgentProtocol.Answer(ok: true, grant: AgentProtocol.WireGrant(grant))
        } catch let error as VaultError {
            return AgentProtocol.Answer(ok: false, error: "failed", message: error.message, hint: error.hint, exitStatus: error.exitStatus)
        } catch {
            return .failure("failed", "unexpected error")
        }
    }

    /// A broker over the held key, after proving the key still opens the
    /// vault as it is now; forgets the key when it does not.
    private func openBroker() -> TokenBroker? {
        guard let unlocker = state.withLock({ $0.unlocker }) else { return nil }
        do {
            _ = try store.open(with: unlocker)
        } catch let error as VaultError where error.kind == .refused {
            lock(reason: "the vault's key slots changed")
            return nil
        } catch {
            return nil  // unreadable for now (being replaced, say): the client falls back
        }
        return TokenBroker(store: store, unlocker: unlocker, environment: configuration.environment)
    }

    // MARK: - Background renewal

    private func tick() async {
        let now = self.now
        if let idle = configuration.idleTimeout, now.timeIntervalSince(state.withLock { $0.lastUsed }) >= idle {
            lock(reason: "no token was asked for in \(DurationText.format(idle)) (--idle-timeout)")
        }
        if let lifetime = configuration.maxLifetime, now.timeIntervalSince(startedAt) >= lifetime {
            lock(reason: "running for \(DurationText.format(lifetime)) (--max-lifetime)")
        }
        guard let broker = openBroker(), let vault = try? store.open(with: broker.unlocker) else { return }
        for (name, profile) in vault.content.profiles.sorted(by: { $0.key < $1.key }) {
            if let token = profile.applicationToken {
                await renewIfDue(key: name, token: token, what: "the application token of profile \(name)", now: now, broker: broker) {
                    TokenRequest(profile: name, minimumLifetime: $0, renewal: .whenStaleStrictly)
                }
            }
            // User records are opened only when the earliest is near its window.
            guard let earliest = vault.summary().profiles[name]?.earliestUserTokenExpiresAt,
                earliest.timeIntervalSince(now) <= Self.longestUserMargin
            else { continue }
            for record in (try? vault.userTokens(profile: name)) ?? [] {
                await renewIfDue(key: name + "\u{0}" + record.email, token: record.token, what: "the token of \(record.email)", now: now, broker: broker) {
                    TokenRequest(profile: name, user: record.email, minimumLifetime: $0, renewal: .whenStaleStrictly)
                }
            }
        }
    }

    /// A quarter of a 90-day user token's life: user records further from
    /// expiry than this are not opened by the renewal loop.
    static let longestUserMargin: TimeInterval = 90 * 86_400 * (renewalShare + jitterShare * renewalShare)

    private func renewIfDue(
        key: String, token: SealedToken, what: String, now: Date, broker: TokenBroker, request: (TimeInterval) -> TokenRequest
    ) async {
        let life = max(1, token.expiresAt.timeIntervalSince(token.obtainedAt))
        let due = state.withLock { state -> Date in
            if let known = state.due[key], known.token == token.value { return known.at }
            let margin = life * Self.renewalShare * (1 + Double.random(in: 0...Self.jitterShare))
            let at = token.expiresAt.addingTimeInterval(-margin)
            state.due[key] = (token.value, at)
            return at
        }
        guard now >= due else { return }
        if let retry = state.withLock({ $0.retry[key] }), now < retry.at { return }
        // Renew when less than the whole margin is left; another process may
        // have renewed already, and then the broker takes its token.
        let margin = token.expiresAt.timeIntervalSince(due) + 1
        do {
            let grant = try await broker.grant(request(margin))
            state.withLock {
                $0.retry[key] = nil
                if grant.token != token.value { $0.renewals += 1 }
            }
            if grant.token != token.value {
                log("renewed \(what), valid until \(ChildEnvironment.rfc3339(grant.expiresAt))")
            }
        } catch {
            let reason = (error as? VaultError)?.message ?? "unexpected error"
            let pause = state.withLock { state -> TimeInterval in
                let pause = min((state.retry[key]?.pause ?? 2.5) * 2, 300)
                state.retry[key] = (now.addingTimeInterval(pause), pause)
                return pause
            }
            log("could not renew \(what): \(reason); trying again in \(DurationText.format(pause)), the sealed token stays valid until \(ChildEnvironment.rfc3339(token.expiresAt))")
        }
    }
}

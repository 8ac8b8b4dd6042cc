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

    private struct State {
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
    private let store: VaultStore
    private let startedAt: Date
    private let state: Mutex<State>
    /// The vault as last opened with the held key, and its file. A lock of
    /// its own, so reading a file (which may hang on a network file system)
    /// never holds up `lock`, `stop` or `status`; dropped with the key.
    private let held = Mutex<PinnedVault?>(nil)
    /// Renewals run one at a time: they all take the same vault lock anyway,
    /// and waiting here is asynchronous, where waiting for the lock blocks a
    /// thread of the small shared pool that every task of the agent needs.
    private let renewalTurn = TakingTurns()
    private let log: @Sendable (String) -> Void

    package init(configuration: Configuration, unlocker: VaultUnlocker, log: @escaping @Sendable (String) -> Void) {
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

    /// Forgets the key and keeps answering "locked".
    package func lock(reason: String) {
        let wasUnlocked = state.withLock { state -> Bool in
            defer { state.unlocker = nil }
            return state.unlocker != nil
        }
        dropHeldVault()
        AuditTrail.forget()
        if wasUnlocked { log("forgot the key: \(reason)") }
    }

    /// Drops the held vault (and the data key in it) unless a request is
    /// reading it right now; that request, or the next tick, drops it once
    /// it finds no key.
    private func dropHeldVault() {
        _ = held.withLockIfAvailable { $0 = nil }
    }

    /// Each of the `servingThreads` runs this: the kernel hands every
    /// connection to one thread waiting in `accept`, and that thread answers
    /// it. A token the held vault can answer is served right there: no
    /// thread, task or queue between request and answer, each of which costs
    /// a wake-up (under load, milliseconds). Only what may wait (a renewal
    /// talking to Tallyfy, a client slow to send) leaves the thread, so a
    /// slow renewal never holds up other clients.
    private func acceptLoop(_ listener: Int32) {
        while !state.withLock({ $0.stopping }) {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else {
                if errno == EINTR || errno == ECONNABORTED { continue }
                usleep(10_000)
                continue
            }
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            serve(connection)
        }
    }

    // MARK: - Serving one connection

    private func serve(_ connection: Int32) {
        AgentSocket.setTimeouts(connection, seconds: AgentProtocol.ioTimeout)
        guard let peer = AgentSocket.peerCredentials(connection), peer.uid == geteuid() else {
            let who = AgentSocket.peerCredentials(connection).map { "uid \($0.uid) (pid \($0.pid))" } ?? "an unknown peer"
            log("refused a connection from \(who): the agent serves uid \(geteuid()) only")
            close(connection)
            return
        }
        // Clients send their whole request as soon as they are connected.
        // One that has not within a moment gets a thread of its own to wait
        // on, with one deadline for the whole frame (the protocol's 5 s, not
        // per byte): a client trickling its request holds up no one else.
        let deadline = Date().addingTimeInterval(AgentProtocol.ioTimeout)
        var reader = AgentProtocol.FrameReader(maxLength: AgentProtocol.maxRequestLength)
        do {
            if let body = try reader.read(from: connection, until: Date().addingTimeInterval(0.1)) {
                return respond(to: body, on: connection, from: peer.pid)
            }
        } catch {
            return drop(connection, from: peer.pid, error)
        }
        guard state.withLock({ state -> Bool in
            guard state.slowClients < Self.slowClientLimit else { return false }
            state.slowClients += 1
            return true
        }) else {
            return drop(connection, from: peer.pid, AgentError.connection("\(Self.slowClientLimit) other clients are still sending"))
        }
        let started = reader
        let thread = Thread { [self] in
            defer { state.withLock { $0.slowClients -= 1 } }
            var reader = started
            do {
                guard let body = try reader.read(from: connection, until: deadline) else {
                    throw AgentError.connection("no whole request within \(Int(AgentProtocol.ioTimeout)) s")
                }
                respond(to: body, on: connection, from: peer.pid)
            } catch {
                drop(connection, from: peer.pid, error)
            }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    private func drop(_ connection: Int32, from pid: pid_t, _ error: Error) {
        let reason: String
        switch error as? AgentError {
        case .connection(let text)?, .unavailable(let text)?: reason = text
        case nil: reason = "\(error)"
        }
        log("dropped a connection from pid \(pid): \(reason)")
        close(connection)
    }

    /// Answers one whole request frame; one that is not a request this agent
    /// serves (an unknown `op` or `renewal`, another version) gets `bad-request`.
    private func respond(to body: [UInt8], on connection: Int32, from pid: pid_t) {
        let request: AgentProtocol.Request
        switch AgentProtocol.decodeRequest(body) {
        case .success(let decoded): request = decoded
        case .failure(let bad):
            log("answered bad-request to pid \(pid): \(bad.message)")
            return reply(.failure("bad-request", bad.message), on: connection, to: pid)
        }
        switch answer(request, from: pid) {
        case .now(let answer):
            reply(answer, on: connection, to: pid)
            if request.op == .stop { stop() }
        case .afterRenewing(let tokenRequest, let vault):
            Task { reply(await self.renewedAnswer(tokenRequest, from: vault, for: pid), on: connection, to: pid) }
        }
    }

    private func reply(_ answer: AgentProtocol.Answer, on connection: Int32, to pid: pid_t) {
        do {
            try AgentProtocol.send(answer, to: connection)
        } catch {
            log("pid \(pid) hung up before its answer; still serving")
        }
        close(connection)
    }

    /// An answer at once, or a token to renew first (`renewedAnswer`).
    private enum Reply {
        case now(AgentProtocol.Answer)
        /// With the vault the request was decided on (held, or for etcd
        /// read from the cache): the renewal reads it again only under the lock.
        case afterRenewing(TokenRequest, UnlockedVault)
    }

    private func answer(_ request: AgentProtocol.Request, from pid: pid_t) -> Reply {
        switch request.op {
        case .status:
            return .now(AgentProtocol.Answer(ok: true, status: status()))
        case .lock:
            lock(reason: "asked to by `agent lock`")
            return .now(AgentProtocol.Answer(ok: true, status: status()))
        case .stop:
            log("asked to stop")
            return .now(AgentProtocol.Answer(ok: true))
        case .token:
            return sealedAnswer(request, for: pid)
        }
    }

    private func status() -> AgentProtocol.Status {
        state.withLock {
            AgentProtocol.Status(vault: configuration.vaultPath, locked: $0.unlocker == nil, pid: getpid(),
                startedAt: startedAt.timeIntervalSince1970, idleTimeout: configuration.idleTimeout,
                maxLifetime: configuration.maxLifetime, served: $0.served, renewals: $0.renewals)
        }
    }

    /// The request in library terms, or the answer that refuses it, for an
    /// agent that holds the vault at `vaultPath` (a function of the request
    /// alone, so the fuzz target runs exactly what the agent runs).
    static func tokenRequest(_ wire: AgentProtocol.Request, vaultPath: String) -> Result<TokenRequest, AgentFailure> {
        guard wire.vault == vaultPath else {
            return .failure(AgentFailure(.failure("other-vault", "this agent holds \(vaultPath) only")))
        }
        guard let profile = wire.profile, let minimum = wire.minimumLifetime, minimum.isFinite, minimum >= 0 else {
            return .failure(AgentFailure(.failure("bad-request", "a token request needs a profile and a minimum lifetime")))
        }
        let renewal: TokenRequest.Renewal
        switch wire.renewal {
        case nil, "whenStale": renewal = .whenStale
        case "whenStaleStrictly": renewal = .whenStaleStrictly
        case "never": renewal = .never
        default:
            // Never a default for a word this agent does not know: the client meant something else.
            return .failure(AgentFailure(.failure("bad-request", "unknown renewal; this agent knows whenStale, whenStaleStrictly and never")))
        }
        return .success(TokenRequest(profile: profile, user: wire.user, minimumLifetime: minimum, renewal: renewal))
    }

    struct AgentFailure: Error {
        var answer: AgentProtocol.Answer
        init(_ answer: AgentProtocol.Answer) { self.answer = answer }
    }

    /// The sealed token from the held vault when it satisfies the request,
    /// else the request to renew.
    private func sealedAnswer(_ wire: AgentProtocol.Request, for pid: pid_t) -> Reply {
        let request: TokenRequest
        switch Self.tokenRequest(wire, vaultPath: configuration.vaultPath) {
        case .success(let valid): request = valid
        case .failure(let refusal): return .now(refusal.answer)
        }
        let outcome = withHeldVault { vault, unlocker -> Result<(TokenGrant?, UnlockedVault), Error> in
            let broker = clientBroker(unlocker, for: pid)
            return Result { (try broker.sealedGrant(request, in: vault), vault) }
        }
        if outcome != nil {
            let now = self.now
            state.withLock {
                $0.lastUsed = now
                $0.served += 1
            }
        }
        switch outcome {
        case nil: return .now(.failure("locked", "the agent holds no key"))
        case .success((let grant?, _))?: return .now(AgentProtocol.Answer(ok: true, grant: AgentProtocol.WireGrant(grant)))
        case .success((nil, let vault))?: return .afterRenewing(request, vault)
        case .failure(let error)?: return .now(Self.failed(error))
        }
    }

    /// A token that had to be renewed: `TokenBroker.grant`, under the vault
    /// lock, exactly as the CLI does it (another process may have renewed
    /// meanwhile; then its token is taken).
    private func renewedAnswer(_ request: TokenRequest, from vault: UnlockedVault, for pid: pid_t) async -> AgentProtocol.Answer {
        guard let unlocker = state.withLock({ $0.unlocker }) else { return .failure("locked", "the agent holds no key") }
        do {
            let broker = clientBroker(unlocker, for: pid)
            let grant = try await renewalTurn.run { try await broker.grant(request, from: vault) }
            return AgentProtocol.Answer(ok: true, grant: AgentProtocol.WireGrant(grant))
        } catch {
            // A key that stopped opening the vault meanwhile is noticed (and
            // forgotten) by the next request (`VaultError.Cause.keyOpensNoSlot`);
            // a refusal here may as well be Tallyfy refusing the client secret.
            return Self.failed(error)
        }
    }

    /// The broker of one client's request: its hand-out is recorded as the
    /// client's (`SO_PEERCRED` pid; the uid was checked to be ours).
    private func clientBroker(_ unlocker: VaultUnlocker, for pid: pid_t) -> TokenBroker {
        var broker = TokenBroker(store: store, unlocker: unlocker, environment: configuration.environment)
        broker.recording = .peer(AuditRequester.peer(pid: pid, uid: UInt32(geteuid())))
        return broker
    }

    private static func failed(_ error: Error) -> AgentProtocol.Answer {
        guard let error = error as? VaultError else { return .failure("failed", "unexpected error") }
        return AgentProtocol.Answer(ok: false, error: "failed", message: error.message, hint: error.hint, exitStatus: error.exitStatus)
    }

    /// Runs `body` on the vault as it is on disk now: the held one while its
    /// file is unchanged (one `stat`), else the file opened again with the
    /// held key. `nil` when no key is held or the vault cannot be opened now
    /// (being replaced, say: the client falls back); the key is forgotten
    /// when it no longer opens the vault.
    private func withHeldVault<T>(_ body: (UnlockedVault, VaultUnlocker) -> T) -> T? {
        if store.isRemote { return withRemoteVault(body) }
        let outcome = held.withLock { pinned -> HeldVault<T> in
            guard let unlocker = state.withLock({ $0.unlocker }) else {
                pinned = nil
                return .noKey
            }
            if let current = pinned, store.isCurrent(current) {
                return .done(body(current.vault, unlocker))
            }
            pinned = nil
            do {
                let opened = try store.openPinned(with: unlocker)
                // Answers need tokens, never the client secret (a renewal
                // opens the vault afresh), so the held copy keeps none.
                opened.vault.forgetClientSecrets()
                pinned = opened
                return .done(body(opened.vault, unlocker))
            } catch let error as VaultError where error.cause == .keyOpensNoSlot {
                return .slotsChanged
            } catch {
                return .unreadable
            }
        }
        switch outcome {
        case .done(let value): return value
        case .noKey, .unreadable: return nil
        case .slotsChanged:
            lock(reason: "the vault's key slots changed")
            return nil
        }
    }

    private enum HeldVault<T> { case done(T), noKey, slotsChanged, unreadable }

    /// A vault in etcd has no file to watch: it is read for every call (from
    /// this machine's cache while `VaultWatch` keeps it current, else from the
    /// cluster), and outside the state lock, since the cluster may be a network away.
    private func withRemoteVault<T>(_ body: (UnlockedVault, VaultUnlocker) -> T) -> T? {
        guard let unlocker = state.withLock({ $0.unlocker }) else { return nil }
        do {
            return body(try store.open(with: unlocker), unlocker)
        } catch let error as VaultError where error.cause == .keyOpensNoSlot {
            // Only this: etcd refusing a certificate or a user (77 too) is the
            // cluster's business, and the key still opens the vault.
            lock(reason: "the vault's key slots changed")
            return nil
        } catch {
            return nil
        }
    }

    // MARK: - Background renewal

    private func tick() async {
        let now = self.now
        if state.withLock({ $0.unlocker == nil }) { dropHeldVault() }
        if let idle = configuration.idleTimeout, now.timeIntervalSince(state.withLock { $0.lastUsed }) >= idle {
            lock(reason: "no token was asked for in \(DurationText.format(idle)) (--idle-timeout)")
        }
        if let lifetime = configuration.maxLifetime, now.timeIntervalSince(startedAt) >= lifetime {
            lock(reason: "running for \(DurationText.format(lifetime)) (--max-lifetime)")
        }
        // The held vault tells what is due; it is re-read only when its file changed.
        guard let (unlocker, held, nearUsers) = withHeldVault({ vault, unlocker in
            let summary = vault.summary()
            let near = summary.profiles.filter { _, profile in
                profile.earliestUserTokenExpiresAt.map { $0.timeIntervalSince(now) <= Self.longestUserMargin } ?? false
            }
            return (unlocker, vault, Set(near.keys))
        }) else { return }
        let profiles = held.content.profiles
        var broker = TokenBroker(store: store, unlocker: unlocker, environment: configuration.environment)
        broker.recording = .none  // nothing handed to anyone: the renewal's write is recorded as a change
        for (name, profile) in profiles.sorted(by: { $0.key < $1.key }) {
            if let token = profile.applicationToken {
                await renewIfDue(key: name, token: token, what: "the application token of profile \(name)", now: now, broker: broker, vault: held) {
                    TokenRequest(profile: name, minimumLifetime: $0, renewal: .whenStaleStrictly)
                }
            }
            // User records are opened only when the earliest is near its
            // window, and in a copy of their own: opening thousands of them
            // under the state lock would hold up every client meanwhile.
            guard nearUsers.contains(name), let vault = try? store.open(with: unlocker) else { continue }
            for record in (try? vault.userTokens(profile: name)) ?? [] {
                await renewIfDue(key: name + "\u{0}" + record.email, token: record.token, what: "the token of \(record.email)", now: now, broker: broker, vault: vault) {
                    TokenRequest(profile: name, user: record.email, minimumLifetime: $0, renewal: .whenStaleStrictly)
                }
            }
        }
    }

    /// The longest lead the schedule gives a 90-day user token: user records
    /// further from expiry than this are not opened by the renewal loop.
    static let longestUserMargin: TimeInterval = 90 * 86_400 * (schedule.fractionLeft + schedule.jitter)

    private func renewIfDue(
        key: String, token: SealedToken, what: String, now: Date, broker: TokenBroker, vault: UnlockedVault,
        request: (TimeInterval) -> TokenRequest
    ) async {
        let life = max(1, token.expiresAt.timeIntervalSince(token.obtainedAt))
        let due = state.withLock { state -> Date in
            if let known = state.due[key], known.token == token.value { return known.at }
            let at = Self.schedule.renewalDate(expiresAt: token.expiresAt, receivedAt: token.obtainedAt, minimumLifetime: 0,
                random: Double.random(in: 0...1))
            state.due[key] = (token.value, at)
            return at
        }
        guard now >= due else { return }
        if let retry = state.withLock({ $0.retry[key] }), now < retry.at { return }
        // Renew when less than the whole margin is left; another process may
        // have renewed already, and then the broker takes its token.
        let margin = token.expiresAt.timeIntervalSince(due) + 1
        do {
            let wanted = request(margin)
            // Decided on the vault in hand: the renewal reads it again only under the lock.
            let grant = try await renewalTurn.run { try await broker.grant(wanted, from: vault) }
            state.withLock {
                $0.retry[key] = nil
                if grant.token != token.value { $0.renewals += 1 }
            }
            if grant.token != token.value {
                log("renewed \(what), valid until \(ChildEnvironment.rfc3339(grant.expiresAt))")
            }
        } catch {
            let reason = (error as? VaultError)?.message ?? "unexpected error"
            let retryAt = state.withLock { state -> Date in
                let attempt = (state.retry[key]?.attempt ?? 0) + 1
                let at = Self.schedule.retryDate(afterFailure: attempt, lifetime: life, expiresAt: token.expiresAt, now: now)
                state.retry[key] = (at, attempt)
                return at
            }
            log("could not renew \(what): \(reason); trying again in \(DurationText.format(max(1, retryAt.timeIntervalSince(now).rounded()))), the sealed token stays valid until \(ChildEnvironment.rfc3339(token.expiresAt))")
        }
    }
}

/// Runs one body at a time, in the order they asked; the others wait
/// without holding a thread.
actor TakingTurns {
    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

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

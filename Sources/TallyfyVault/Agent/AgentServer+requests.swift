import Foundation
import Synchronization
import TallyfyVaultCore

/// Request handling: a decoded request to its answer (token, status, lock,
/// stop), renewing first where the sealed token will not do.
extension AgentServer {
    /// Answers one whole request frame on its connection.
    func respond(to body: [UInt8], on connection: Int32, from pid: pid_t) {
        let (decided, op) = reply(toFrame: body, from: pid)
        switch decided {
        case .now(let answer):
            reply(answer, on: connection, to: pid)
            if op == .stop { stop() }
        case .afterRenewing(let tokenRequest, let vault):
            Task { reply(await self.renewedAnswer(tokenRequest, from: vault, for: pid), on: connection, to: pid) }
        case .afterOpening(let tokenRequest):
            Task { reply(await self.answerAfterOpening(tokenRequest, for: pid), on: connection, to: pid) }
        }
    }

    /// What one whole request frame gets, with no socket (`AgentRequestTests`):
    /// one that is not a request this agent serves (an unknown `op` or
    /// `renewal`, another version) gets `bad-request`; `op` is `nil` then.
    func reply(toFrame body: [UInt8], from pid: pid_t) -> (reply: Reply, op: AgentProtocol.Operation?) {
        switch AgentProtocol.decodeRequest(body) {
        case .success(let request):
            return (answer(request, from: pid), request.op)
        case .failure(let bad):
            log("answered bad-request to pid \(pid): \(bad.message)")
            return (.now(.failure("bad-request", bad.message)), nil)
        }
    }

    /// An answer at once, or a token to renew first (`renewedAnswer`), or
    /// the vault to open again first (`answerAfterOpening`): neither on the
    /// serving thread.
    enum Reply {
        case now(AgentProtocol.Answer)
        /// With the vault the request was decided on (held, or for etcd
        /// read from the cache): the renewal reads it again only under the lock.
        case afterRenewing(TokenRequest, UnlockedVault)
        /// The held vault is not current: it changed, or for etcd the watch
        /// is not live (then it is read from the cluster).
        case afterOpening(TokenRequest)
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
        switch withCurrentHeldVault({ sealedDecision(request, for: pid, in: $0, $1) }) {
        case .noKey: return .now(Self.lockedAnswer)
        case .stale: return .afterOpening(request)
        case .done(let outcome):
            switch served(outcome) {
            case .answer(let answer): return .now(answer)
            case .renew(let vault): return .afterRenewing(request, vault)
            }
        }
    }

    /// `sealedAnswer` with the held vault opened again first.
    func answerAfterOpening(_ request: TokenRequest, for pid: pid_t) async -> AgentProtocol.Answer {
        guard let outcome = await withHeldVault({ sealedDecision(request, for: pid, in: $0, $1) }) else { return Self.lockedAnswer }
        switch served(outcome) {
        case .answer(let answer): return answer
        case .renew(let vault): return await renewedAnswer(request, from: vault, for: pid)
        }
    }

    private func sealedDecision(_ request: TokenRequest, for pid: pid_t, in vault: UnlockedVault, _ unlocker: VaultUnlocker)
        -> Result<(TokenGrant?, UnlockedVault), Error>
    {
        let broker = clientBroker(unlocker, for: pid)
        return Result { (try broker.sealedGrant(request, in: vault), vault) }
    }

    /// Counts a request decided on the held vault and says what it gets:
    /// an answer, or a renewal (from the vault it was decided on).
    private func served(_ outcome: Result<(TokenGrant?, UnlockedVault), Error>) -> Served {
        let now = self.now
        state.withLock {
            $0.lastUsed = now
            $0.served += 1
        }
        switch outcome {
        case .success((let grant?, _)): return .answer(AgentProtocol.Answer(ok: true, grant: AgentProtocol.WireGrant(grant)))
        case .success((nil, let vault)): return .renew(vault)
        case .failure(let error): return .answer(Self.failed(error))
        }
    }

    private enum Served {
        case answer(AgentProtocol.Answer)
        case renew(UnlockedVault)
    }

    static let lockedAnswer = AgentProtocol.Answer.failure("locked", "the agent holds no key")

    /// A token that had to be renewed: `TokenBroker.grant`, under the vault
    /// lock, exactly as the CLI does it (another process may have renewed
    /// meanwhile; then its token is taken).
    ///
    /// While the renewal waits (its turn, the lock, an etcd election), the
    /// vault may change under it: another machine's renewal, brought to this
    /// machine's cache by the watch, or another process's written file. The
    /// first token that serves the request answers. A renewal that lost goes
    /// on, takes that token under the lock and asks Tallyfy nothing. Found by
    /// tools/partition-test: a keep-fresh child's renewal waited 4.8 s for the
    /// fleet lock through an election while its agent already handed the
    /// fleet's new token to `exec`, and its token file expired meanwhile.
    func renewedAnswer(_ request: TokenRequest, from vault: UnlockedVault, for pid: pid_t) async -> AgentProtocol.Answer {
        guard let unlocker = state.withLock({ $0.unlocker }) else { return Self.lockedAnswer }
        let broker = clientBroker(unlocker, for: pid)
        let unrecorded = broker.recording(.none)  // only the answer that is sent is recorded, once
        do {
            let grant = try await FirstAnswer.of(
                { try await self.renewalTurn.run { try await unrecorded.grant(request, from: vault) } },
                orWhenReady: {
                    await self.withHeldVault { held, _ in try? unrecorded.decideSealed(request, in: held) } ?? nil
                })
            // Locked while the renewal waited: nothing leaves an agent that holds no key.
            guard state.withLock({ $0.unlocker != nil }) else { return Self.lockedAnswer }
            return AgentProtocol.Answer(ok: true, grant: AgentProtocol.WireGrant(try broker.handedOut(grant)))
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
        TokenBroker(store: store, unlocker: unlocker, environment: configuration.environment)
            .recording(.peer(AuditRequester.peer(pid: pid, uid: UInt32(geteuid()))))
    }

    private static func failed(_ error: Error) -> AgentProtocol.Answer {
        guard let error = error as? VaultError else { return .failure("failed", "unexpected error") }
        return AgentProtocol.Answer(ok: false, error: "failed", message: error.message, hint: error.hint, exitStatus: error.exitStatus)
    }
}

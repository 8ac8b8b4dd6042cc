import Foundation
import Synchronization
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

/// The agent's request handling without a socket: a whole request frame to
/// the answer it gets (`AgentServer.reply(toFrame:from:)`), over a real file
/// vault. The socket, the peer check and the threads are AgentTests' and
/// AgentHostileClientTests' (end to end).
@Suite struct AgentRequestTests {
    let vault: BrokerVault
    let server: AgentServer
    let logged = Lines()

    /// A running agent: it has opened the vault once (its first tick), so
    /// requests are answered from the held vault on the serving thread.
    init() async throws {
        vault = try await BrokerVault()
        let now = vault.issuedAt.addingTimeInterval(600)  // the sealed token is fresh
        server = AgentServer(
            configuration: AgentServer.Configuration(socketPath: vault.folder + "/agent.sock", vaultPath: vault.path,
                idleTimeout: nil, maxLifetime: nil, environment: vault.environment(now: now)),
            unlocker: VaultUnlocker(secrets: [vault.key]), log: { [logged] line in logged.lines.withLock { $0.append(line) } })
        _ = await server.withHeldVault { _, _ in () }
    }

    /// The answer to `json`, sent as the body of one frame; `nil` when the
    /// agent would renew, or open the vault again, first.
    func ask(_ json: String) -> AgentProtocol.Answer? {
        guard case .now(let answer) = server.reply(toFrame: Array(json.utf8), from: 4242).reply else { return nil }
        return answer
    }

    func tokenRequest(profile: String = "default", renewal: String? = nil, vault path: String? = nil, minimumLifetime: Double = 1800) -> String {
        let request = AgentProtocol.Request(op: .token, vault: path ?? vault.path, profile: profile, minimumLifetime: minimumLifetime,
            renewal: renewal)
        return String(decoding: try! JSONEncoder().encode(request), as: UTF8.self)
    }

    @Test func aFreshSealedTokenIsAnsweredAtOnce() throws {
        defer { vault.remove() }
        let answer = try #require(ask(tokenRequest()))
        #expect(answer.ok && answer.grant?.token == BrokerVault.sealedToken && answer.grant?.renewalFailure == nil)
        #expect(server.state.withLock { $0.served } == 1)
    }

    @Test func anUnknownOpIsABadRequest() throws {
        defer { vault.remove() }
        let answer = try #require(ask(#"{"version":\#(AgentProtocol.version),"op":"unseal-everything"}"#))
        #expect(!answer.ok && answer.error == "bad-request")
        #expect(answer.message == "unknown op; this agent answers token, status, lock, stop")
        #expect(logged.lines.withLock { $0 } == ["answered bad-request to pid 4242: unknown op; this agent answers token, status, lock, stop"])
    }

    @Test func anUnknownRenewalModeIsABadRequestNotWhenStale() throws {
        defer { vault.remove() }
        let answer = try #require(ask(tokenRequest(renewal: "whenever")))
        #expect(!answer.ok && answer.error == "bad-request")
        #expect(answer.message == "unknown renewal; this agent knows whenStale, whenStaleStrictly and never")
        let handedOut = answer.grant != nil  // a Bool: a failed expectation prints its operands, and a grant holds a token
        #expect(!handedOut, "a token was handed out on an unknown renewal mode")
    }

    @Test func aMissingProfileFailsWithTheCLIsStatus() throws {
        defer { vault.remove() }
        let before = try vault.bytes()
        let answer = try #require(ask(tokenRequest(profile: "missing")))
        #expect(!answer.ok && answer.error == "failed" && answer.exitStatus == 78)
        #expect(answer.message == #"profile "missing" has no credentials in this vault"#)
        #expect(try vault.bytes() == before)
    }

    @Test func anotherVaultIsDeclined() throws {
        defer { vault.remove() }
        let answer = try #require(ask(tokenRequest(vault: vault.folder + "/other.tfv")))
        #expect(!answer.ok && answer.error == "other-vault")
    }

    @Test func aStaleTokenIsRenewedNotAnsweredFromTheHeldVault() throws {
        defer { vault.remove() }
        // More than the sealed token's 50 minutes left asked for: not the held vault's to answer.
        let request = tokenRequest(minimumLifetime: 3500)
        guard case .afterRenewing(let wanted, _) = server.reply(toFrame: Array(request.utf8), from: 4242).reply else {
            Issue.record("a stale token was answered without renewing")
            return
        }
        #expect(wanted.profile == "default" && wanted.minimumLifetime == 3500 && wanted.renewal == .whenStale)
    }

    /// tools/partition-test: a keep-fresh child's renewal waited 4.8 s (an
    /// etcd election) while its agent already held the fleet's new token.
    /// Here the renewal waits for its turn behind a renewal that does not
    /// end; another process seals a token meanwhile, and it answers the
    /// client while the turn is still taken. The renewal, once its turn
    /// comes, takes that token and asks Tallyfy nothing.
    @Test func aWaitingRenewalIsAnsweredByATokenSealedMeanwhile() async throws {
        defer { vault.remove() }
        let now = vault.issuedAt.addingTimeInterval(600)
        // More than the sealed token's 50 minutes left asked for.
        let request = tokenRequest(minimumLifetime: 3500)
        guard case .afterRenewing(let wanted, let decidedOn) = server.reply(toFrame: Array(request.utf8), from: 4242).reply else {
            Issue.record("a stale token was answered without renewing")
            return
        }
        let (gate, open) = AsyncStream<Void>.makeStream()
        let (entered, enter) = AsyncStream<Void>.makeStream()
        let turnTaken = Task { [server] in
            await server.renewalTurn.run {
                enter.yield()
                for await _ in gate {}
            }
        }
        defer { open.finish() }
        for await _ in entered { break }  // the turn is taken before the client's renewal asks for it

        let tallyfy = ScriptedTallyfy(.token)
        let answer = Mutex<AgentProtocol.Answer?>(nil)
        let asked = Task { [server] in
            _ = await tallyfy.serving {
                let reply = await server.renewedAnswer(wanted, from: decidedOn, for: 4242)
                answer.withLock { $0 = reply }
            }
        }
        try await VaultStore(path: vault.path, environment: vault.environment(now: now)).update(with: [vault.key]) {
            $0.content.profiles["default"]?.applicationToken = SealedToken(
                value: "sealed-by-another-process", expiresAt: now.addingTimeInterval(7200), obtainedAt: now)
        }
        let deadline = ContinuousClock.now + .seconds(20)
        while answer.withLock({ $0 }) == nil, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        let answered = try #require(answer.withLock { $0 }, "no answer while the renewal waited for its turn")
        #expect(answered.ok && answered.grant?.token == "sealed-by-another-process")

        // The client's renewal waits for its turn (then runs, before anything queued after it).
        while await server.renewalTurn.queued < 1, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(await server.renewalTurn.queued == 1)
        open.finish()
        await turnTaken.value
        await server.renewalTurn.run {}
        await asked.value
        #expect(tallyfy.requests == 0)
    }

    /// A vault changed by another process is no longer the held one: the
    /// serving thread leaves it to a task (`answerAfterOpening`), which opens
    /// it again and answers from it; then it is held, and current again.
    @Test func aChangedVaultIsOpenedAgainOffTheServingThread() async throws {
        defer { vault.remove() }
        let now = vault.issuedAt.addingTimeInterval(600)
        try await VaultStore(path: vault.path, environment: vault.environment(now: now)).update(with: [vault.key]) {
            $0.content.profiles["default"]?.applicationToken = SealedToken(
                value: "sealed-by-another-process", expiresAt: now.addingTimeInterval(7200), obtainedAt: now)
        }
        guard case .afterOpening(let wanted) = server.reply(toFrame: Array(tokenRequest().utf8), from: 4242).reply else {
            Issue.record("a vault that changed on disk was answered from the held copy")
            return
        }
        let answer = await server.answerAfterOpening(wanted, for: 4242)
        #expect(answer.ok && answer.grant?.token == "sealed-by-another-process")
        let again = try #require(ask(tokenRequest()), "the vault opened again is not held")
        #expect(again.ok && again.grant?.token == "sealed-by-another-process")
        #expect(server.state.withLock { $0.served } == 2)
    }

    @Test func afterLockEveryTokenRequestIsLocked() throws {
        defer { vault.remove() }
        let locked = try #require(ask(#"{"version":\#(AgentProtocol.version),"op":"lock"}"#))
        #expect(locked.ok && locked.status?.locked == true)
        let answer = try #require(ask(tokenRequest()))
        #expect(!answer.ok && answer.error == "locked")
    }
}

/// What the agent logged.
final class Lines: Sendable {
    let lines = Mutex<[String]>([])
}

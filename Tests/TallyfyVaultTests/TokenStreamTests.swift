import Foundation
import Synchronization
import Testing
import TallyfyVault
import TallyfyVaultCore

/// When `TokenStream` renews (`RenewalSchedule`), and what it yields when the
/// source fails: a fake source, no vault, no server.
@Suite struct TokenStreamTests {
    let schedule = RenewalSchedule.standard
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func aSevenDayTokenIsRenewedWithAQuarterOfItsLifeLeft() {
        let week: TimeInterval = 7 * 86400
        #expect(schedule.margin(lifetime: week, minimumLifetime: 3600) == week / 4)
        let at = schedule.renewalDate(expiresAt: now.addingTimeInterval(week), receivedAt: now, minimumLifetime: 3600, random: 0)
        #expect(at == now.addingTimeInterval(week * 0.75))
        // Jitter only brings it forward, by at most 5% of the life.
        let early = schedule.renewalDate(expiresAt: now.addingTimeInterval(week), receivedAt: now, minimumLifetime: 3600, random: 1)
        #expect(abs(early.timeIntervalSince(now) - week * 0.70) < 0.001)
    }

    @Test func aLongerMinimumLifetimeRenewsEarlierButNeverInALoop() {
        // --min-ttl 3d on a 7-day token: renewed with 3 days left.
        #expect(schedule.margin(lifetime: 7 * 86400, minimumLifetime: 3 * 86400) == 3 * 86400)
        // --min-ttl 1h on a 6-second token: capped at half its life.
        #expect(schedule.margin(lifetime: 6, minimumLifetime: 3600) == 3)
        // A token with no life left: not before the minimum gap.
        let at = schedule.renewalDate(expiresAt: now, receivedAt: now, minimumLifetime: 3600, random: 0.5)
        #expect(at == now.addingTimeInterval(schedule.minimumGap))
    }

    @Test func retriesBackOffUpToATenthOfTheLifeAndTryJustAfterExpiry() {
        let week: TimeInterval = 7 * 86400
        #expect((1...4).map { schedule.retryDelay(afterFailure: $0, lifetime: week) } == [1, 2, 4, 8])
        #expect(schedule.retryDelay(afterFailure: 30, lifetime: week) == 300)
        #expect(schedule.retryDelay(afterFailure: 5, lifetime: 20) == 2)
        #expect(schedule.retryDelay(afterFailure: 3, lifetime: 4) == 1)
        // Still valid for 0.5 s, backoff 8 s: try again before expiry, halfway.
        #expect(schedule.retryDate(afterFailure: 4, lifetime: week, expiresAt: now.addingTimeInterval(0.5), now: now)
            == now.addingTimeInterval(0.25))
        // Valid for 0.4 s only: too little to try before it; right after expiry.
        let expiry = now.addingTimeInterval(0.4)
        #expect(schedule.retryDate(afterFailure: 4, lifetime: week, expiresAt: expiry, now: now) == expiry.addingTimeInterval(0.05))
        // Expired already: plain backoff.
        #expect(schedule.retryDate(afterFailure: 4, lifetime: week, expiresAt: now, now: now) == now.addingTimeInterval(8))
    }

    /// tools/partition-test: a keep-fresh child's renewal (through its agent)
    /// failed 0.8 s before its 12-second token expired, while another machine
    /// held the fleet lock; the 1 s backoff put the retry after the expiry,
    /// and the child's file held an expired token although the fleet had a
    /// fresh one. While there is life left, the retry comes before expiry.
    @Test func aRetryComesBeforeExpiryWhileTheTokenHasLifeLeft() {
        let expiry = now.addingTimeInterval(0.8)
        let retry = schedule.retryDate(afterFailure: 1, lifetime: 12, expiresAt: expiry, now: now)
        #expect(retry < expiry)
        #expect(retry == now.addingTimeInterval(0.4))
        // A backoff that ends before expiry is kept as it is.
        #expect(schedule.retryDate(afterFailure: 1, lifetime: 12, expiresAt: now.addingTimeInterval(3), now: now)
            == now.addingTimeInterval(1))
        var late: [String] = []
        for left in stride(from: 0.5, through: 600, by: 0.25) {
            for attempt in 1...12 {
                let at = schedule.retryDate(afterFailure: attempt, lifetime: 7 * 86400, expiresAt: now.addingTimeInterval(left), now: now)
                if !(at < now.addingTimeInterval(left) && at > now) { late.append("\(left) s left, attempt \(attempt)") }
            }
        }
        #expect(late.isEmpty, "\(late.count) retries not before expiry, e.g. \(late.prefix(3))")
    }

    /// tools/partition-test: a rotation sealed a token a second after the one
    /// a keep-fresh child held (Tallyfy's expiries are whole seconds, so it
    /// outlived that one by exactly 1 s); the child's renewal asked for a
    /// token lasting a second longer than its own, refused the rotation's,
    /// and the fleet asked Tallyfy again 6.7 s after the rotation. Any
    /// token that expires later than the current one is taken.
    @Test func aSealedTokenThatOutlivesTheCurrentOneIsTakenWithoutRenewing() async throws {
        var early = RenewalSchedule()
        early.minimumGap = 0.05
        early.jitter = 0
        // Renew with 99% of the life left (0.6 s in): minute-long tokens, so
        // however late a loaded machine wakes the stream, neither has
        // expired. Short tokens made this test wall-clock bound: CI woke it
        // after both a 3 s token and the rotation's had expired.
        early.fractionLeft = 0.99
        let current = TokenGrant(profile: "default", orgID: "org", apiURL: "http://127.0.0.1/api", token: "before-rotation",
            expiresAt: Date().addingTimeInterval(60), user: nil)
        // Under the old rule's 1 s, and more than the moment between the
        // stream's asking and the vault's answering.
        let rotated = TokenGrant(profile: "default", orgID: "org", apiURL: "http://127.0.0.1/api", token: "rotation",
            expiresAt: current.expiresAt.addingTimeInterval(0.9), user: nil)
        let askedTallyfy = Mutex(0)
        // The vault: the rotation's token when it is what the request asks
        // for, else a new one from Tallyfy.
        let source = TokenSource { request in
            if rotated.expiresAt.timeIntervalSinceNow >= request.minimumLifetime { return rotated }
            let n = askedTallyfy.withLock { $0 += 1; return $0 }
            return TokenGrant(profile: "default", orgID: "org", apiURL: "http://127.0.0.1/api", token: "renewed-\(n)",
                expiresAt: Date().addingTimeInterval(60), user: nil)
        }
        var tokens: [String] = []
        for try await event in TokenStream(request: TokenRequest(profile: "default", minimumLifetime: 0), source: source, initial: current,
            schedule: early)
        {
            if case .token(let grant) = event { tokens.append(grant.token) }
            if tokens.count == 2 { break }
        }
        #expect(tokens == ["before-rotation", "rotation"])
        #expect(askedTallyfy.withLock { $0 } == 0)
    }

    /// A source that hands out short-lived tokens and fails as told.
    final class FakeSource: Sendable {
        let script: Mutex<[Result<TimeInterval, VaultError>]>
        let calls = Mutex(0)

        init(_ script: [Result<TimeInterval, VaultError>]) { self.script = Mutex(script) }

        var source: TokenSource {
            TokenSource { request in
                let n = self.calls.withLock { $0 += 1; return $0 }
                let step = self.script.withLock { $0.isEmpty ? .success(60) : $0.removeFirst() }
                switch step {
                case .success(let lifetime):
                    return TokenGrant(profile: request.profile, orgID: "org", apiURL: "http://127.0.0.1/api", token: "t\(n)",
                        expiresAt: Date().addingTimeInterval(lifetime), user: nil)
                case .failure(let error): throw error
                }
            }
        }
    }

    @Test func failuresAreReportedAndRetriedUntilARenewalWorks() async throws {
        var fast = RenewalSchedule()
        fast.minimumGap = 0.05
        fast.retryBase = 0.05
        fast.jitter = 0
        let down = VaultError(.unavailable, "Tallyfy answered 503")
        let fake = FakeSource([.success(0.4), .failure(down), .failure(down), .success(60)])
        let stream = TokenStream(request: TokenRequest(profile: "default", minimumLifetime: 0.1), source: fake.source, schedule: fast)
        var events: [String] = []
        var failures: [TokenStream.RenewalFailure] = []
        for try await event in stream {
            switch event {
            case .token(let grant): events.append(grant.token)
            case .renewalFailed(let failure):
                events.append("failed")
                failures.append(failure)
            }
            if events.count == 4 { break }
        }
        #expect(events == ["t1", "failed", "failed", "t4"])
        #expect(failures.map(\.attempt) == [1, 2])
        #expect(failures.allSatisfy { $0.reason == "Tallyfy answered 503" && $0.current.token == "t1" })
    }

    @Test func anExpiredTokenIsReportedAsExpired() async throws {
        var fast = RenewalSchedule()
        fast.minimumGap = 0.05
        fast.retryBase = 0.05
        let down = VaultError(.unavailable, "Tallyfy could not be reached")
        let fake = FakeSource([.success(0.2)] + Array(repeating: .failure(down), count: 50))
        let stream = TokenStream(request: TokenRequest(profile: "default", minimumLifetime: 0), source: fake.source, schedule: fast)
        for try await event in stream {
            if case .renewalFailed(let failure) = event, failure.tokenHasExpired {
                #expect(failure.current.expiresAt <= Date())
                return
            }
        }
        Issue.record("the stream ended without reporting the expiry")
    }

    @Test func onlyTheFirstGrantThrows() async throws {
        let fake = FakeSource([.failure(VaultError(.refused, "invalid_client"))])
        var iterator = TokenStream(request: TokenRequest(profile: "default"), source: fake.source).makeAsyncIterator()
        do {
            _ = try await iterator.next()
            Issue.record("the first grant failed, and the stream yielded anyway")
        } catch let error as VaultError {
            #expect(error.kind == .refused)
        }
    }
}

/// `--on-renew` and `--on-expiry` as the supervisor reads them.
@Suite struct KeepFreshOptionsTests {
    @Test func onRenewSpellings() throws {
        #expect(try KeepFreshOptions.OnRenew(parsing: "none") == KeepFreshOptions.OnRenew.none)
        #expect(try KeepFreshOptions.OnRenew(parsing: "restart") == .restart)
        #expect(try KeepFreshOptions.OnRenew(parsing: "signal:HUP") == .signal(SIGHUP))
        #expect(try KeepFreshOptions.OnRenew(parsing: "signal:SIGUSR1") == .signal(SIGUSR1))
        #expect(try KeepFreshOptions.OnRenew(parsing: "signal:usr2") == .signal(SIGUSR2))
        for bad in ["", "signal:", "signal:NOPE", "signal:1", "HUP", "Restart", "sometimes"] {
            #expect(throws: VaultError.self, "\(bad)") { try KeepFreshOptions.OnRenew(parsing: bad) }
        }
        #expect(try KeepFreshOptions.OnRenew(parsing: "signal:WINCH") == .signal(SIGWINCH))
        // Issue 24 F12: only signals a program can take as "reload".
        for notAReload in ["KILL", "SIGSTOP", "PIPE", "SEGV", "bus", "TERM", "INT", "QUIT", "ALRM", "CONT", "TSTP"] {
            let error = try #require(throws: VaultError.self, "\(notAReload)") {
                try KeepFreshOptions.OnRenew(parsing: "signal:" + notAReload)
            }
            #expect(error.exitStatus == 64)
            #expect(error.hint?.contains("--on-renew restart") == true, "\(notAReload): \(error.hint ?? "")")
        }
        #expect(KeepFreshOptions.OnExpiry(rawValue: "stop") == .stop)
        #expect(KeepFreshOptions().onRenew == .none && KeepFreshOptions().onExpiry == .keep && KeepFreshOptions().stopGrace == 10)
    }
}

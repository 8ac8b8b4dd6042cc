import Foundation
import Testing
import TallyfyVaultCore

/// The hand-out rules of `TokenPolicy`, which `TokenBroker` applies for
/// every consumer: when a sealed token will do, when another process's
/// renewal is taken, and the one rule for riding out a failed renewal.
@Suite struct TokenPolicyTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    private func token(left: TimeInterval, obtained: TimeInterval = 1_700_000_000) -> SealedToken {
        SealedToken(value: "t", expiresAt: now.addingTimeInterval(left), obtainedAt: Date(timeIntervalSince1970: obtained))
    }

    @Test func freshMeansAtLeastTheMinimumLifetimeLeft() {
        #expect(TokenPolicy.isFresh(token(left: 3600), minimumLifetime: 3600, now: now))
        #expect(!TokenPolicy.isFresh(token(left: 3599), minimumLifetime: 3600, now: now))
        #expect(!TokenPolicy.isFresh(nil, minimumLifetime: 0, now: now))
        #expect(TokenPolicy.isValid(token(left: 1), now: now) && !TokenPolicy.isValid(token(left: 0), now: now))
    }

    /// Issuing a user token needs the application token to outlive the call:
    /// five minutes, but with short-lived tokens a quarter of the lifetime, or
    /// every `users token` would renew the application token for the fleet.
    @Test func aUserCallNeedsAtMostAQuarterOfTheApplicationTokensLife() {
        let week = SealedToken(value: "t", expiresAt: now.addingTimeInterval(7 * 86400), obtainedAt: now)
        #expect(TokenBroker.applicationTokenMargin(forUserCallsWith: week) == 300)
        let twelveSeconds = SealedToken(value: "t", expiresAt: now.addingTimeInterval(12), obtainedAt: now)
        #expect(TokenBroker.applicationTokenMargin(forUserCallsWith: twelveSeconds) == 3)
        let odd = SealedToken(value: "t", expiresAt: now, obtainedAt: now.addingTimeInterval(5))
        #expect(TokenBroker.applicationTokenMargin(forUserCallsWith: odd) == 0)
    }

    /// A call to Tallyfy under the vault lock waits at most half the life
    /// the sealed application token has left, and at least a twelfth of its
    /// lifetime (and a second), also once it has expired, so a holder that
    /// can't reach Tallyfy lets go in time for one that can; with no token
    /// sealed, the client's own timeouts.
    @Test func underTheLockTallyfyIsGivenHalfTheLifeLeft() {
        func twelveSeconds(left: TimeInterval) -> SealedToken {
            SealedToken(value: "t", expiresAt: now.addingTimeInterval(left), obtainedAt: now.addingTimeInterval(left - 12))
        }
        #expect(TokenPolicy.patienceUnderLock(applicationToken: twelveSeconds(left: 4), now: now) == 2)
        #expect(TokenPolicy.patienceUnderLock(applicationToken: twelveSeconds(left: 1), now: now) == 1)
        #expect(TokenPolicy.patienceUnderLock(applicationToken: twelveSeconds(left: -5), now: now) == 1)
        let week = SealedToken(value: "t", expiresAt: now.addingTimeInterval(2 * 86400), obtainedAt: now.addingTimeInterval(-5 * 86400))
        #expect(TokenPolicy.patienceUnderLock(applicationToken: week, now: now) == 86400)
        let expiredWeek = SealedToken(value: "t", expiresAt: now.addingTimeInterval(-60), obtainedAt: now.addingTimeInterval(-7 * 86400 - 60))
        #expect(abs((TokenPolicy.patienceUnderLock(applicationToken: expiredWeek, now: now) ?? 0) - 7 * 86400 / 12) < 0.001)
        let tiny = SealedToken(value: "t", expiresAt: now.addingTimeInterval(0.5), obtainedAt: now.addingTimeInterval(-1))
        #expect(TokenPolicy.patienceUnderLock(applicationToken: tiny, now: now) == TokenPolicy.minimumPatienceUnderLock)
        #expect(TokenPolicy.patienceUnderLock(applicationToken: nil, now: now) == nil)
    }

    /// Under the lock: a token another process renewed since we looked is
    /// taken even when it can't satisfy a long `--min-ttl` (single flight);
    /// the same token we saw is not.
    @Test func anotherProcesssRenewalIsTakenButNotTheTokenWeSaw() {
        let seen = token(left: 100)
        #expect(!TokenPolicy.canReuse(seen, seen: seen.identity, minimumLifetime: 8 * 86400, now: now))
        let renewed = token(left: 7 * 86400, obtained: 1_799_999_999)
        #expect(TokenPolicy.canReuse(renewed, seen: seen.identity, minimumLifetime: 8 * 86400, now: now))
        // Nothing sealed before: any valid token someone else sealed.
        #expect(TokenPolicy.canReuse(renewed, seen: nil, minimumLifetime: 8 * 86400, now: now))
        #expect(!TokenPolicy.canReuse(nil, seen: seen.identity, minimumLifetime: 0, now: now))
    }

    /// The ride-out table: reason × `--strict-ttl` (or `--no-refresh`, or a
    /// forced renewal) × time left → hand out the sealed token or fail.
    @Test func theRideOutRuleTable() {
        let passing: [VaultError] = [VaultError(.unavailable, "Tallyfy answered 503"), VaultError(.tryLater, "the vault is locked")]
        let final: [VaultError] = [
            VaultError(.refused, "Tallyfy refused the client credentials", cause: .tallyfyRefusedCredentials),
            VaultError(.corrupt, "damaged"), VaultError(.configuration, "no credentials"), VaultError(.io, "disk"),
            VaultError(.usage, "bad"), VaultError(.notFound, "gone"),
        ]
        let renewals: [(TokenRequest.Renewal, Bool)] = [(.whenStale, true), (.whenStaleStrictly, false), (.never, false), (.always, false)]
        let lefts: [(TimeInterval, Bool)] = [(7 * 86400, true), (61, true), (60, false), (1, false), (-1, false)]
        for (renewal, rideable) in renewals {
            let request = TokenRequest(profile: "default", minimumLifetime: 8 * 86400, renewal: renewal)
            for (left, enough) in lefts {
                for error in passing {
                    #expect(TokenPolicy.canFallBack(token(left: left), after: error, request: request, now: now) == (rideable && enough),
                        "\(renewal), \(left) s left, \(error.kind)")
                }
                for error in final {
                    #expect(!TokenPolicy.canFallBack(token(left: left), after: error, request: request, now: now), "\(error.kind)")
                }
                #expect(!TokenPolicy.canFallBack(nil, after: passing[0], request: request, now: now))
            }
        }
    }

    @Test func aCauseIsMatchedNotItsText() {
        let wrongKey = VaultError(.refused, "wrong passphrase or key", cause: .keyOpensNoSlot)
        let tls = VaultError(.refused, "etcd refused the TLS connection", cause: .etcdRefusedTLS)
        #expect(wrongKey.exitStatus == tls.exitStatus)
        #expect(wrongKey.cause == .keyOpensNoSlot && tls.cause != .keyOpensNoSlot)
        #expect(VaultError(.refused, "x").cause == .unspecified)
    }
}

import Foundation
import Testing
import TallyfyVaultCore

/// `check`'s verdicts (`HealthCheck.evaluate`), from a clear summary and a
/// clock given here: no vault, no key, no waiting for a token to age.
@Suite struct HealthCheckTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)
    let hour: TimeInterval = 3600
    let day: TimeInterval = 86400

    private func profile(appLeft: TimeInterval?, userLeft: TimeInterval? = nil, secretAge: TimeInterval = 86400,
        failure: RenewalFailure? = nil) -> ProfileSummary
    {
        ProfileSummary(
            secretSetAt: now.addingTimeInterval(-secretAge), applicationTokenExpiresAt: appLeft.map { now.addingTimeInterval($0) },
            userTokenCount: userLeft == nil ? 0 : 2, earliestUserTokenExpiresAt: userLeft.map { now.addingTimeInterval($0) },
            lastRenewalFailure: failure)
    }

    private func evaluate(_ profiles: [String: ProfileSummary], only: [String]? = nil, thresholds: HealthCheck.Thresholds = .init())
        -> HealthCheck.Report
    {
        HealthCheck.evaluate(VaultSummary(profiles: profiles), profiles: only, thresholds: thresholds, now: now)
    }

    /// The application token's time left against the thresholds (48 h
    /// warning, 12 h critical by default), each edge included.
    @Test func theApplicationTokensTimeLeftDecides() {
        let table: [(left: TimeInterval, expected: HealthCheck.Status)] = [
            (7 * day, .ok), (48 * hour + 1, .ok), (48 * hour, .warning), (12 * hour + 1, .warning),
            (12 * hour, .critical), (1, .critical), (-hour, .critical),
        ]
        for row in table {
            let report = evaluate(["default": profile(appLeft: row.left)])
            #expect(report.status == row.expected, "\(row.left) s left")
            #expect(report.checkedAt == now)
        }
        let expired = evaluate(["default": profile(appLeft: -2 * hour)])
        #expect(expired.problems.map(\.message) == ["profile default: application token expired 2h ago (2027-01-15T06:00:00Z)"])
    }

    /// User tokens warn 14 days ahead; the worst problem of all profiles is
    /// the verdict, and each problem names its profile and kind.
    @Test func theWorstProblemOfEveryProfileIsTheVerdict() {
        let report = evaluate([
            "a": profile(appLeft: 7 * day, userLeft: 10 * day),
            "b": profile(appLeft: 6 * hour),
            "c": profile(appLeft: 7 * day),
        ])
        #expect(report.status == .critical)
        #expect(report.problems.map { "\($0.profile ?? "-") \($0.kind) \($0.status.name)" } == ["a user WARNING", "b application CRITICAL"])
        #expect(evaluate(["a": profile(appLeft: 7 * day, userLeft: 15 * day)]).status == .ok)
    }

    /// What a summary can't promise: no token sealed yet, no credentials, an
    /// unknown profile asked for, a recorded renewal failure, an old secret.
    @Test func missingTokensFailuresAndOldSecretsWarn() {
        #expect(evaluate([:]).problems.map(\.kind) == ["vault"])
        #expect(evaluate([:]).status == .warning)
        #expect(evaluate(["default": profile(appLeft: nil)]).problems.map(\.kind) == ["application"])
        #expect(evaluate(["default": profile(appLeft: 7 * day)], only: ["other"]).problems.map(\.message) == ["profile other: no credentials in this vault"])
        let failed = evaluate(["default": profile(appLeft: 7 * day, failure: RenewalFailure(at: now, reason: "Tallyfy answered 503"))])
        #expect(failed.status == .warning && failed.problems.map(\.kind) == ["refresh"])
        #expect(failed.problems.first?.message.contains("Tallyfy answered 503") == true)
        #expect(evaluate(["default": profile(appLeft: 7 * day, secretAge: 91 * day)]).problems.map(\.kind) == ["secret"])
        #expect(evaluate(["default": profile(appLeft: 7 * day, secretAge: 89 * day)]).status == .ok)
    }

    /// `--warn-before`, `--critical-before` and `--secret-max-age` move the
    /// edges; a vault that can't be read is UNKNOWN, worse than CRITICAL.
    @Test func thresholdsMoveTheEdgesAndUnreadableIsUnknown() {
        let thresholds = HealthCheck.Thresholds(warnBefore: 3 * day, criticalBefore: 2 * day, secretMaxAge: 30 * day)
        #expect(evaluate(["default": profile(appLeft: 60 * hour)], thresholds: thresholds).status == .warning)
        #expect(evaluate(["default": profile(appLeft: 47 * hour)], thresholds: thresholds).status == .critical)
        #expect(evaluate(["default": profile(appLeft: 7 * day, secretAge: 31 * day)], thresholds: thresholds).status == .warning)
        let unreadable = HealthCheck.unknown("the vault is corrupt", now: now)
        #expect(unreadable.status == .unknown && unreadable.status > .critical)
        #expect(unreadable.problems.map(\.message) == ["the vault is corrupt"])
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The monitoring check behind `check`: Nagios statuses from the clear summary.
///
/// It reads only the non-secret summary, so cron can run it with no key.
package enum HealthCheck {
    /// Nagios plugin statuses, which are also `check`'s exit statuses.
    package enum Status: Int32, Sendable, Comparable, Codable {
        case ok = 0, warning = 1, critical = 2, unknown = 3

        package static func < (a: Status, b: Status) -> Bool { a.rawValue < b.rawValue }

        package var name: String {
            switch self {
            case .ok: "OK"
            case .warning: "WARNING"
            case .critical: "CRITICAL"
            case .unknown: "UNKNOWN"
            }
        }
    }

    /// When to warn; README.md's defaults.
    package struct Thresholds: Sendable {
        package var warnApplication: TimeInterval = 48 * 3600
        package var warnUser: TimeInterval = 14 * 86400
        package var critical: TimeInterval = 12 * 3600
        package var secretMaxAge: TimeInterval = 90 * 86400

        package init() {}

        /// `--warn-before`, when given, applies to both kinds of token.
        package init(warnBefore: TimeInterval?, criticalBefore: TimeInterval?, secretMaxAge: TimeInterval?) {
            if let warnBefore {
                warnApplication = warnBefore
                warnUser = warnBefore
            }
            if let criticalBefore { critical = criticalBefore }
            if let secretMaxAge { self.secretMaxAge = secretMaxAge }
        }
    }

    /// One thing that is not OK.
    package struct Problem: Sendable, Equatable, Codable {
        package var status: Status
        package var profile: String?
        /// "application", "user", "secret" or "vault".
        package var kind: String
        package var message: String

        package init(status: Status, profile: String?, kind: String, message: String) {
            self.status = status
            self.profile = profile
            self.kind = kind
            self.message = message
        }
    }

    package struct Report: Sendable {
        package var status: Status
        package var problems: [Problem]
        package var summary: VaultSummary
        package var checkedAt: Date
    }

    /// Evaluates `summary` for the given profiles (all when `nil`).
    package static func evaluate(_ summary: VaultSummary, profiles: [String]?, thresholds: Thresholds, now: Date) -> Report {
        var problems: [Problem] = []
        let names = profiles ?? summary.profiles.keys.sorted()
        if names.isEmpty {
            problems.append(Problem(status: .warning, profile: nil, kind: "vault",
                message: "the vault holds no credentials; store them with `tallyfy-vault credentials set`"))
        }
        for name in names {
            guard let profile = summary.profiles[name] else {
                problems.append(Problem(status: .warning, profile: name, kind: "vault",
                    message: "profile \(name): no credentials in this vault"))
                continue
            }
            if let expiry = profile.applicationTokenExpiresAt {
                if let status = tokenStatus(expiry, warn: thresholds.warnApplication, critical: thresholds.critical, now: now) {
                    problems.append(Problem(status: status, profile: name, kind: "application",
                        message: "profile \(name): application token \(Lifetime.expiryPhrase(expiry, now: now))"))
                }
            } else {
                problems.append(Problem(status: .warning, profile: name, kind: "application",
                    message: "profile \(name): no application token sealed yet; run `tallyfy-vault login`"))
            }
            if let expiry = profile.earliestUserTokenExpiresAt,
                let status = tokenStatus(expiry, warn: thresholds.warnUser, critical: thresholds.critical, now: now)
            {
                problems.append(Problem(status: status, profile: name, kind: "user",
                    message: "profile \(name): a user token \(Lifetime.expiryPhrase(expiry, now: now)) (\(profile.userTokenCount) sealed; `tallyfy-vault users list` shows which)"))
            }
            if let failure = profile.lastRenewalFailure {
                problems.append(Problem(status: .warning, profile: name, kind: "refresh",
                    message: "profile \(name): the last renewal failed at \(ChildEnvironment.rfc3339(failure.at)) (\(failure.reason)); a sealed token was used instead"))
            }
            let age = now.timeIntervalSince(profile.secretSetAt)
            if age > thresholds.secretMaxAge {
                problems.append(Problem(status: .warning, profile: name, kind: "secret",
                    message: "profile \(name): the client secret is \(DurationText.format(age)) old (over \(DurationText.format(thresholds.secretMaxAge))); rotate it with `tallyfy-vault rotate-secret`"))
            }
        }
        return Report(status: problems.map(\.status).max() ?? .ok, problems: problems, summary: summary, checkedAt: now)
    }

    static func tokenStatus(_ expiresAt: Date, warn: TimeInterval, critical: TimeInterval, now: Date) -> Status? {
        let left = expiresAt.timeIntervalSince(now)
        if left <= critical { return .critical }
        if left <= warn { return .warning }
        return nil
    }

    /// The report for a vault that can't be read at all.
    package static func unknown(_ message: String, now: Date) -> Report {
        Report(status: .unknown, problems: [Problem(status: .unknown, profile: nil, kind: "vault", message: message)],
            summary: VaultSummary(), checkedAt: now)
    }
}

extension Lifetime {
    /// "expires in 23h (2026-12-01T10:00:00Z)" or "expired 2h ago (…)".
    package static func expiryPhrase(_ expiresAt: Date, now: Date) -> String {
        let left = expiresAt.timeIntervalSince(now)
        let when = ChildEnvironment.rfc3339(expiresAt)
        return left > 0 ? "expires in \(DurationText.format(left)) (\(when))" : "expired \(DurationText.format(-left)) ago (\(when))"
    }
}

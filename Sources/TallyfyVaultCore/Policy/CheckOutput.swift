#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The three forms `check` prints: text for cron mail, JSON, and the
/// node_exporter textfile format.
package enum CheckFormat: String, Sendable, CaseIterable {
    case text, json, prometheus

    /// The report in this form. Text is empty when everything is OK, so cron
    /// sends mail only about problems.
    package func render(_ report: HealthCheck.Report) throws -> String {
        switch self {
        case .text:
            return report.problems.map { "\($0.status.name): \($0.message)" }.joined(separator: "\n")
        case .json:
            return try renderJSON(report)
        case .prometheus:
            return renderPrometheus(report)
        }
    }

    private struct JSONReport: Encodable {
        var status: String
        var exitCode: Int32
        var checkedAt: String
        var problems: [JSONProblem]
        var profiles: [String: JSONProfile]
    }

    private struct JSONProblem: Encodable {
        var status: String
        var profile: String?
        var kind: String
        var message: String
    }

    private struct JSONProfile: Encodable {
        var applicationTokenExpiresAt: String?
        var userTokenCount: Int
        var earliestUserTokenExpiresAt: String?
        var secretSetAt: String
    }

    private func renderJSON(_ report: HealthCheck.Report) throws -> String {
        let rfc = ChildEnvironment.rfc3339
        let value = JSONReport(
            status: report.status.name, exitCode: report.status.rawValue, checkedAt: rfc(report.checkedAt),
            problems: report.problems.map { JSONProblem(status: $0.status.name, profile: $0.profile, kind: $0.kind, message: $0.message) },
            profiles: report.summary.profiles.mapValues {
                JSONProfile(
                    applicationTokenExpiresAt: $0.applicationTokenExpiresAt.map(rfc), userTokenCount: $0.userTokenCount,
                    earliestUserTokenExpiresAt: $0.earliestUserTokenExpiresAt.map(rfc), secretSetAt: rfc($0.secretSetAt))
            })
        return try PlainJSON.string(value)
    }

    private func renderPrometheus(_ report: HealthCheck.Report) -> String {
        var lines: [String] = []
        func metric(_ name: String, _ help: String, _ samples: [(labels: String, value: Double)]) {
            lines.append("# HELP \(name) \(help)")
            lines.append("# TYPE \(name) gauge")
            for sample in samples { lines.append("\(name)\(sample.labels) \(Self.number(sample.value))") }
        }
        let profiles = report.summary.profiles.sorted { $0.key < $1.key }
        var expiries: [(String, Double)] = []
        for (name, profile) in profiles {
            if let at = profile.applicationTokenExpiresAt {
                expiries.append(("{profile=\"\(name)\",kind=\"application\"}", at.timeIntervalSince1970))
            }
            if let at = profile.earliestUserTokenExpiresAt {
                expiries.append(("{profile=\"\(name)\",kind=\"user\"}", at.timeIntervalSince1970))
            }
        }
        metric("tallyfy_vault_token_expiry_timestamp_seconds",
            "When the token expires (for user tokens: the earliest), Unix seconds.", expiries)
        metric("tallyfy_vault_user_tokens", "Sealed user tokens per profile.",
            profiles.map { ("{profile=\"\($0.key)\"}", Double($0.value.userTokenCount)) })
        metric("tallyfy_vault_secret_set_timestamp_seconds", "When the client secret was set or last rotated, Unix seconds.",
            profiles.map { ("{profile=\"\($0.key)\"}", $0.value.secretSetAt.timeIntervalSince1970) })
        metric("tallyfy_vault_check_status", "The check's Nagios status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
            [("", Double(report.status.rawValue))])
        metric("tallyfy_vault_check_timestamp_seconds", "When this check ran, Unix seconds.",
            [("", report.checkedAt.timeIntervalSince1970)])
        return lines.joined(separator: "\n")
    }

    /// Prometheus floats: integers without a fraction, others in full.
    private static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}

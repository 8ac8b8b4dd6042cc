#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// One line of `tallyfy-vault doctor`.
package struct DoctorCheck: Sendable, Equatable, Encodable {
    package enum Level: String, Sendable, Encodable, Comparable {
        case ok = "OK", skip = "SKIP", warn = "WARN", fail = "FAIL"

        private var rank: Int {
            switch self {
            case .ok: 0
            case .skip: 1
            case .warn: 2
            case .fail: 3
            }
        }

        package static func < (lhs: Level, rhs: Level) -> Bool { lhs.rank < rhs.rank }
    }

    /// What was checked: `vault file`, `token URL (default)`.
    package var check: String
    package var status: Level
    /// What was found; never a secret or a token.
    package var detail: String
    /// What to do about it, for WARN and FAIL.
    package var hint: String?

    package init(_ check: String, _ status: Level, _ detail: String, hint: String? = nil) {
        self.check = check
        self.status = status
        self.detail = detail
        self.hint = hint
    }
}

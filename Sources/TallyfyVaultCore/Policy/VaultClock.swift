#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The current time as the vault's policy sees it.
///
/// Debug builds (the test suite's) let `TALLYFY_VAULT_TEST_NOW` move it: an
/// absolute Unix time (`1767225600`) or an offset from the real clock
/// (`+91d`), so expiry and secret-age rules are tested without sleeping.
/// Release builds always use the real clock.
package enum VaultClock {
    package static func now(environment: [String: String] = ProcessInfo.processInfo.environment) -> Date {
        #if TALLYFY_TEST_HOOKS
            if let value = environment["TALLYFY_VAULT_TEST_NOW"] {
                if value.hasPrefix("+"), let offset = try? DurationText.parse(String(value.dropFirst())) {
                    return Date().addingTimeInterval(offset)
                }
                if value.hasPrefix("-"), let offset = try? DurationText.parse(String(value.dropFirst())) {
                    return Date().addingTimeInterval(-offset)
                }
                if let seconds = TimeInterval(value) { return Date(timeIntervalSince1970: seconds) }
            }
        #endif
        return Date()
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Human forms of "how long until this expires".
package enum Lifetime {
    /// "in 6d 23h", or "expired 2h ago".
    package static func describe(_ expiresAt: Date, now: Date) -> String {
        let left = expiresAt.timeIntervalSince(now)
        return left > 0 ? "in \(DurationText.format(left))" : "expired \(DurationText.format(-left)) ago"
    }
}

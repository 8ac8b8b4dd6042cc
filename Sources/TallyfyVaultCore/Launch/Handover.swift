#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// What the `tallyfy-vault` launcher passes to the CLI it hands a command
/// over to, so the CLI does not find it out again: the launcher's release
/// (`TallyfyVaultVersion.launcherVariable`), the moment it started (from
/// which the helper's one deadline is counted), and, when its pass found the
/// sealed token too old, which token it saw, so the CLI goes straight to the
/// renewal under the lock without reading the vault again. Every variable
/// here is removed from a child's environment (`ChildEnvironment.removed`).
/// None holds a secret: a token's identity is its two timestamps.
package enum Handover {
    /// `CLOCK_MONOTONIC` nanoseconds when the launcher started (one clock for
    /// the whole machine, so the CLI can tell how much of a deadline is left).
    package static let launchedAtVariable = "TALLYFY_VAULT_LAUNCHED_AT"

    /// `VAULT␟PROFILE␟USER␟MIN-TTL␟EXPIRES␟OBTAINED` (␟ = U+001F; the last
    /// two empty when no token was sealed): what the launcher's pass saw.
    package static let seenVariable = "TALLYFY_VAULT_HANDOVER_SEEN"

    package static let variables: Set<String> = [TallyfyVaultVersion.launcherVariable, launchedAtVariable, seenVariable]

    /// The launcher's note that its pass for `request` on `vault` saw `seen` and found it too old.
    package static func note(seen: SealedToken.Identity?, for request: TokenRequest, vault: String) -> String {
        let times = seen.map { ["\($0.expiresAt.timeIntervalSince1970)", "\($0.obtainedAt.timeIntervalSince1970)"] } ?? ["", ""]
        return ([vault, request.profile, request.user ?? "", "\(request.minimumLifetime)"] + times).joined(separator: "\u{1F}")
    }

    /// What the launcher saw for exactly this request and vault: `nil` when
    /// it left no note for it (the CLI then makes its own pass), `.some(nil)`
    /// when it saw no sealed token.
    package static func seen(for request: TokenRequest, vault: String, environment: [String: String]) -> SealedToken.Identity?? {
        guard request.renewal == .whenStale || request.renewal == .whenStaleStrictly,
            let fields = environment[seenVariable]?.split(separator: "\u{1F}", omittingEmptySubsequences: false),
            fields.count == 6, fields[0] == vault, fields[1] == request.profile, fields[2] == (request.user ?? ""),
            Double(fields[3]) == request.minimumLifetime
        else { return nil }
        if fields[4].isEmpty && fields[5].isEmpty { return .some(nil) }
        guard let expires = Double(fields[4]), let obtained = Double(fields[5]) else { return nil }
        return .some(SealedToken.Identity(expiresAt: Date(timeIntervalSince1970: expires), obtainedAt: Date(timeIntervalSince1970: obtained)))
    }

    /// Now, in `CLOCK_MONOTONIC` nanoseconds.
    package static func monotonicNow() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    /// What is left of `bound` counted from when the launcher started (from
    /// now when no launcher started this process, or its note is unusable).
    package static func remaining(of bound: Duration, environment: [String: String]) -> Duration {
        let now = monotonicNow()
        guard let text = environment[launchedAtVariable], let started = UInt64(text), started <= now else { return bound }
        let spent = Duration.nanoseconds(Int64(clamping: now - started))
        return spent >= bound ? .zero : bound - spent
    }
}

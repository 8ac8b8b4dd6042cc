import Foundation
import TallyfyVaultCore

/// `exec --keep-fresh`, `exec --mask` and `exec --proxy` over the core's
/// `Supervision` (which runs the child, forwards signals and masks): this
/// adds what needs the HTTP stack, renewing the token with a `TokenStream`.
/// It keeps no key while it waits: `source` reads the unlock secrets again
/// at each renewal.
package enum Supervisor {
    /// Runs `command` until it ends, keeping its token fresh; returns its
    /// status. Throws a `LaunchError` when it cannot be started (127 / 126),
    /// and a `VaultError` (69) after stopping it when the token expired and
    /// `--on-expiry stop` was asked for. With `mask`, the command's output
    /// reaches ours through `MaskedOutput`, which learns each renewed token
    /// before the command can.
    package static func run(
        _ command: [String], parentEnvironment: [String: String], request: TokenRequest, first: TokenGrant,
        source: TokenSource, options: KeepFreshOptions, mask: Bool = false, schedule: RenewalSchedule = .standard,
        note: @escaping @Sendable (String) -> Void
    ) throws -> Int32 {
        let what = describe(request)
        let keepFresh = Supervision.KeepFresh(options: options, what: what) { renewals in
            let renewer = Task {
                let stream = TokenStream(request: request, source: source, initial: first, schedule: schedule, environment: parentEnvironment)
                var handedOver = false  // the first event is `first`, which the child already has
                do {
                    for try await event in stream {
                        if Task.isCancelled { return }
                        switch event {
                        case .token(let grant):
                            guard handedOver else {
                                handedOver = true
                                continue
                            }
                            renewals.renewed(grant)
                        case .renewalFailed(let failure):
                            if Task.isCancelled { return }
                            renewals.note(failureLine(failure, what: what))
                            if failure.tokenHasExpired && options.onExpiry == .stop {
                                renewals.expired(failure.reason, at: failure.current.expiresAt)
                                return
                            }
                        }
                    }
                } catch {}  // only the first grant throws, and it was given
            }
            return { renewer.cancel() }
        }
        return try Supervision.run(command, parentEnvironment: parentEnvironment, first: first, mask: mask, keepFresh: keepFresh, note: note)
    }

    /// `exec --mask` without `--keep-fresh`: runs `command` with `grant`'s
    /// token and copies its output through the masker; no renewal, no token
    /// file. Returns its status, or throws a `LaunchError` (127 / 126).
    package static func runMasked(_ command: [String], parentEnvironment: [String: String], grant: TokenGrant) throws -> Int32 {
        try Supervision.run(command, parentEnvironment: parentEnvironment, first: grant, mask: true)
    }

    /// `exec --proxy`: runs `command` in `environment` (the proxy's address
    /// and capability, no token: `ChildEnvironment.buildProxied`), with
    /// signals forwarded as for `--keep-fresh`; with `mask`, its output
    /// goes through the masker, which knows the capability. No renewal here
    /// (the proxy renews), no token file. Returns its status, or throws a
    /// `LaunchError` (127 / 126).
    package static func runProxied(_ command: [String], environment: [String: String], capability: String, mask: Bool) throws -> Int32 {
        let shown = TokenGrant(profile: "", orgID: "", apiURL: "", token: capability, expiresAt: .distantFuture, user: nil)
        return try Supervision.run(command, parentEnvironment: environment, first: shown, mask: mask, fixedEnvironment: environment)
    }

    /// One line per failed renewal, never a secret.
    static func failureLine(_ failure: TokenStream.RenewalFailure, what: String) -> String {
        let next = max(0, Int(failure.retryAt.timeIntervalSinceNow.rounded(.up)))
        let state = failure.tokenHasExpired
            ? "the current one expired at \(ChildEnvironment.rfc3339(failure.current.expiresAt))"
            : "the command keeps the current one, valid until \(ChildEnvironment.rfc3339(failure.current.expiresAt))"
        return "could not renew the \(what) (\(failure.reason)); \(state); next attempt in \(next)s"
    }

    package static func describe(_ request: TokenRequest) -> String {
        request.user.map { "user token for \($0)" } ?? "application token for profile \"\(request.profile)\""
    }
}

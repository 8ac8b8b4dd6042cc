import Foundation
import Synchronization
import TallyfyVaultCore

/// What one proxy run counted; `proxy status` and `exec --proxy --verbose`
/// print it. Never a token, a capability or a path.
package final class ProxyCounters: Sendable {
    private let state = Mutex<Snapshot>(Snapshot())

    package struct Snapshot: Sendable, Equatable, Codable {
        /// Every request the proxy read a head of (or failed to), refused or not.
        package var requests = 0
        /// Answered by the proxy itself and never forwarded.
        package var refusals = 0
        /// Tokens taken in: background renewals and those after a 401.
        package var renewals = 0
        /// Forwarded requests Tallyfy did not answer (502/504 from the proxy).
        package var upstreamFailures = 0
        /// Requests sent again after a 401 with a renewed token.
        package var retries = 0

        package init() {}

        /// One line for people: `2000 requests, 0 refused, 1 renewal, 1 retried after a 401, 0 upstream failures`.
        package var line: String {
            func plural(_ n: Int, _ word: String) -> String { "\(n) \(word)\(n == 1 ? "" : "s")" }
            return "\(plural(requests, "request")), \(refusals) refused, \(plural(renewals, "renewal")), "
                + "\(retries) retried after a 401, \(plural(upstreamFailures, "upstream failure"))"
        }
    }

    package init() {}

    package var snapshot: Snapshot { state.withLock { $0 } }
    func count(_ change: (inout Snapshot) -> Void) { state.withLock { change(&$0) } }
}

/// The token behind the proxy: the grant in use, renewed in the background
/// before it gets close to expiry (`TokenStream`, as `exec --keep-fresh`), and
/// renewed at once when Tallyfy answers 401 to it.
///
/// A 401 renewal is single flight: every request rejected with the same
/// token waits for one renewal; across processes the renewal runs under
/// the vault lock in `TokenBroker`, which takes a token another process
/// sealed meanwhile instead of asking Tallyfy again. So a `rotate-secret` or
/// a `login` elsewhere, on a Tallyfy that revokes older tokens when it issues
/// a new one, costs the child nothing.
///
/// A 401 can also mean "this token may not do that" (an application token on
/// a user endpoint). So that such requests do not make a renewal each, a
/// renewed token that was refused again on the retry is not renewed on a 401
/// until Tallyfy has accepted it once.
package actor ProxyTokenKeeper {
    package private(set) var current: TokenGrant
    private let request: TokenRequest
    private let source: TokenSource
    private let counters: ProxyCounters
    private let environment: [String: String]
    private var renewing: Task<TokenGrant?, Never>?
    /// A token renewed after a 401 and refused again on the retry; not
    /// renewed on a 401 until Tallyfy accepts it.
    private var refusedAfterRenewal: String?
    private var background: Task<Void, Never>?

    package init(first: TokenGrant, request: TokenRequest, source: TokenSource, counters: ProxyCounters,
        environment: [String: String] = ProcessInfo.processInfo.environment)
    {
        current = first
        self.request = request
        self.source = source
        self.counters = counters
        self.environment = environment
    }

    /// Starts renewing before expiry; `note` hears of each failed attempt.
    package func startRenewing(schedule: RenewalSchedule = .standard, note: @escaping @Sendable (String) -> Void) {
        let stream = TokenStream(request: request, source: source, initial: current, schedule: schedule, environment: environment)
        let what = Supervisor.describe(request)
        background = Task { [weak self] in
            var first = true
            do {
                for try await event in stream {
                    if Task.isCancelled { return }
                    switch event {
                    case .token(let grant):
                        if first {
                            first = false
                            continue
                        }
                        await self?.adopt(grant)
                    case .renewalFailed(let failure):
                        note(Supervisor.failureLine(failure, what: what).replacingOccurrences(of: "the command keeps", with: "the proxy keeps"))
                    }
                }
            } catch {}
        }
    }

    package func stop() {
        background?.cancel()
        renewing?.cancel()
    }

    /// A token from the background renewal, unless a 401 renewal already
    /// brought one that lives longer.
    private func adopt(_ grant: TokenGrant) {
        guard grant.token != current.token, grant.expiresAt >= current.expiresAt || refusedAfterRenewal == current.token else { return }
        current = grant
        counters.count { $0.renewals += 1 }
    }

    /// Tallyfy accepted `token`.
    package func accepted(_ token: String) {
        if refusedAfterRenewal == token { refusedAfterRenewal = nil }
    }

    /// The retry after a renewal got a 401 too: the token is probably fine
    /// and the request not allowed.
    package func refusedOnRetry(_ token: String) {
        refusedAfterRenewal = token
    }

    /// Tallyfy answered 401 to `rejected`: a token to retry with, or `nil`
    /// when there is none better (the 401 then goes to the child as it came).
    package func renewed(after rejected: String) async -> TokenGrant? {
        if rejected != current.token { return current }  // renewed meanwhile
        if let renewing { return await renewing.value }
        guard refusedAfterRenewal != rejected else { return nil }
        var renewal = request
        if renewal.renewal == .never || renewal.renewal == .always { renewal.renewal = .whenStale }
        // Longer than the rejected token has left: the sealed token is taken
        // only if another process sealed a newer one, else Tallyfy is asked.
        renewal.minimumLifetime = max(0, current.expiresAt.timeIntervalSince(VaultClock.now(environment: environment))) + 1
        let source = self.source
        let task = Task<TokenGrant?, Never> {
            guard let grant = try? await source.grant(renewal), grant.renewalFailure == nil, grant.token != rejected else { return nil }
            return grant
        }
        renewing = task
        let grant = await task.value
        renewing = nil
        guard let grant else { return nil }
        current = grant
        counters.count { $0.renewals += 1 }
        return grant
    }
}

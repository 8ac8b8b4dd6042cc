import Foundation
import Synchronization
import TallyfyVaultCore

/// Where a request reached the proxy: its TCP port on 127.0.0.1 (the
/// capability required) or the standing proxy's Unix socket (its own uid only).
package enum ProxyListener: String, Sendable, Codable {
    case tcp, unix
}

/// What one proxy run counted; `proxy status` and `exec --proxy --verbose`
/// print it. Never a token, a capability or a path.
package final class ProxyCounters: Sendable {
    private let state = Mutex<Snapshot>(Snapshot())

    package struct Snapshot: Sendable, Equatable, Codable {
        /// Every request the proxy read a head of (or failed to), refused or
        /// not, over either listener.
        package var requests = 0
        /// Answered by the proxy itself and never forwarded.
        package var refusals = 0
        /// Tokens taken in: background renewals and those after a 401.
        package var renewals = 0
        /// Forwarded requests Tallyfy did not answer (502/504 from the proxy).
        package var upstreamFailures = 0
        /// Requests sent again after a 401 with a renewed token.
        package var retries = 0
        /// The Unix socket's share of `requests` and `refusals`, and the
        /// connections it refused from other uids; `nil` without a socket
        /// (`exec --proxy`). The TCP port's share is the rest.
        package var unixSocket: UnixSocketCounts?

        package init() {}

        package struct UnixSocketCounts: Sendable, Equatable, Codable {
            package var requests = 0
            package var refusals = 0
            /// Connections from another uid, closed before a byte was read:
            /// not requests, so in neither count above.
            package var otherUsers = 0

            package init() {}
        }

        /// One line for people: `2000 requests, 0 refused, 1 renewal, 1 retried after a 401, 0 upstream failures`,
        /// and `, 1 connection from another user refused` when there was one.
        package var line: String {
            let refusedPeers = unixSocket?.otherUsers ?? 0
            return "\(Self.plural(requests, "request")), \(refusals) refused, \(Self.plural(renewals, "renewal")), "
                + "\(retries) retried after a 401, \(Self.plural(upstreamFailures, "upstream failure"))"
                + (refusedPeers > 0 ? ", \(Self.plural(refusedPeers, "connection")) from another user refused" : "")
        }

        /// Requests and refusals over one listener, for `proxy status`.
        package func line(for listener: ProxyListener) -> String {
            switch listener {
            case .tcp:
                let unix = unixSocket ?? UnixSocketCounts()
                return "\(Self.plural(requests - unix.requests, "request")), \(refusals - unix.refusals) refused"
            case .unix:
                let unix = unixSocket ?? UnixSocketCounts()
                return "\(Self.plural(unix.requests, "request")), \(unix.refusals) refused, "
                    + "\(Self.plural(unix.otherUsers, "connection")) from another user refused"
            }
        }

        static func plural(_ n: Int, _ word: String) -> String { "\(n) \(word)\(n == 1 ? "" : "s")" }
    }

    /// `unixSocket`: whether the run has a Unix socket (its counts start at 0).
    package init(unixSocket: Bool = false) {
        if unixSocket { state.withLock { $0.unixSocket = .init() } }
    }

    package var snapshot: Snapshot { state.withLock { $0 } }
    func count(_ change: (inout Snapshot) -> Void) { state.withLock { change(&$0) } }

    /// A request (or a refusal) read over `listener`.
    func count(over listener: ProxyListener, requests: Int = 0, refusals: Int = 0) {
        state.withLock {
            $0.requests += requests
            $0.refusals += refusals
            if listener == .unix {
                $0.unixSocket = $0.unixSocket ?? .init()
                $0.unixSocket?.requests += requests
                $0.unixSocket?.refusals += refusals
            }
        }
    }

    /// A connection to the Unix socket from another uid, closed unread.
    func countOtherUser() {
        state.withLock {
            $0.unixSocket = $0.unixSocket ?? .init()
            $0.unixSocket?.otherUsers += 1
        }
    }
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
        // Longer than the rejected token has left.
        let renewal = request.outliving(current, now: VaultClock.now(environment: environment))
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

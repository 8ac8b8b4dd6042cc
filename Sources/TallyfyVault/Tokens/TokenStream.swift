import Foundation
import TallyfyVaultCore

/// How a fresh grant is obtained: the seam between "keep a token fresh" and
/// "where tokens come from".
///
/// Today that is a `TokenBroker` (the vault, renewed under its lock, single
/// flight with every other process). An agent that holds the unlocked vault
/// plugs in here as one more closure, and nothing above it changes.
public struct TokenSource: Sendable {
    /// Returns a valid grant for the request, renewing when the request says
    /// so; throws when none can be had.
    public var grant: @Sendable (TokenRequest) async throws -> TokenGrant

    public init(grant: @escaping @Sendable (TokenRequest) async throws -> TokenGrant) {
        self.grant = grant
    }

    /// One broker, kept for the source's whole life (it remembers the data key).
    public static func broker(_ broker: TokenBroker) -> TokenSource {
        TokenSource { try await broker.grant($0) }
    }

    /// A new broker for every grant, made by `open` (which reads the unlock
    /// secrets again) and dropped afterwards: between renewals the process
    /// holds no key and no secret. A passphrase costs one key derivation per
    /// renewal, which at one renewal per several days is nothing.
    public static func reopening(_ open: @escaping @Sendable () throws -> TokenBroker) -> TokenSource {
        TokenSource { request in try await open().grant(request) }
    }

    /// A running agent first (no unlocking here at all), else `fallback`,
    /// asked afresh at every grant: an agent started, locked or stopped while
    /// the command runs is noticed at the next renewal.
    public static func agentFirst(_ agent: AgentClient?, vaultPath: String, else fallback: TokenSource) -> TokenSource {
        TokenSource { request in
            if let agent, let grant = try agent.grant(request, vaultPath: vaultPath) { return grant }
            return try await fallback.grant(request)
        }
    }
}

/// When a kept-fresh token is renewed, and how failures are retried.
///
/// A token handed over with a lifetime `L` left is renewed when
/// `max(L/4, min(minimumLifetime, L/2))` of it is left (a quarter of its life,
/// or the request's `--min-ttl` when that is longer, but never more than half
/// the life, so a `--min-ttl` longer than Tallyfy's lifetime cannot make it
/// renew in a loop), brought forward by a random `0…jitter·L` so that many
/// processes started together do not ask Tallyfy in the same second. With
/// Tallyfy's 7-day application tokens that is about 42 hours before expiry.
///
/// A failed renewal is retried after `retryBase`, doubling up to the smaller
/// of `retryCap` and a tenth of the lifetime (but at least `minimumGap`);
/// a retry that would come after the token expires comes halfway through
/// the life it has left instead, and once more just after the token
/// expires, so an expiry is noticed when it happens. Retries go on after expiry too: the caller decides whether an
/// expired token ends anything.
public struct RenewalSchedule: Sendable, Equatable {
    package var fractionLeft: Double = 0.25
    package var jitter: Double = 0.05
    /// The shortest time between two renewals, or between retries.
    package var minimumGap: TimeInterval = 1
    package var retryBase: TimeInterval = 1
    package var retryCap: TimeInterval = 300
    /// The shortest pause before a retry brought forward to come before expiry.
    package var leastRetryPause: TimeInterval = 0.25

    public init() {}

    public static let standard = RenewalSchedule()

    /// How long before expiry a token with `lifetime` left is renewed (before jitter).
    package func margin(lifetime: TimeInterval, minimumLifetime: TimeInterval) -> TimeInterval {
        max(lifetime * fractionLeft, min(minimumLifetime, lifetime / 2))
    }

    /// When to renew a token expiring at `expiresAt`, received at `now`;
    /// `random` in 0…1 picks the jitter.
    package func renewalDate(expiresAt: Date, receivedAt now: Date, minimumLifetime: TimeInterval, random: Double) -> Date {
        let lifetime = max(0, expiresAt.timeIntervalSince(now))
        let lead = margin(lifetime: lifetime, minimumLifetime: minimumLifetime) + random * jitter * lifetime
        return max(expiresAt.addingTimeInterval(-lead), now.addingTimeInterval(minimumGap))
    }

    /// The pause after failed attempt number `attempt` (1-based) for a token
    /// that had `lifetime` when it was handed over.
    package func retryDelay(afterFailure attempt: Int, lifetime: TimeInterval) -> TimeInterval {
        let cap = max(minimumGap, min(retryCap, lifetime / 10))
        let step = retryBase * pow(2, Double(min(max(attempt, 1), 30) - 1))
        return max(minimumGap, min(step, cap))
    }

    /// When to try again after a failure at `now`: after the backoff, but
    /// while the token still has life left, before it expires: when the
    /// backoff would end past the expiry, halfway through the life left, so
    /// a renewal another process or machine made meanwhile is taken in time;
    /// with too little left for that (`leastRetryPause`), just past the
    /// expiry, so the expiry is noticed when it happens. Found by
    /// tools/partition-test: a keep-fresh child whose renewal failed 0.8 s
    /// before expiry (the fleet lock was held) retried only after it, and its
    /// file held an expired token although the fleet had renewed 2 s before.
    package func retryDate(afterFailure attempt: Int, lifetime: TimeInterval, expiresAt: Date, now: Date) -> Date {
        let backoff = now.addingTimeInterval(retryDelay(afterFailure: attempt, lifetime: lifetime))
        guard now < expiresAt else { return backoff }
        if backoff < expiresAt { return backoff }
        let halfway = expiresAt.timeIntervalSince(now) / 2
        if halfway >= leastRetryPause { return now.addingTimeInterval(halfway) }
        return expiresAt.addingTimeInterval(0.05)
    }
}

/// A token kept fresh for as long as it is iterated: the first grant at once,
/// then each renewed grant shortly before the previous one gets close to
/// expiry (`RenewalSchedule`), and a `renewalFailed` event for every failed
/// attempt, after which it retries with backoff. It never ends on its own;
/// cancel the task that iterates it to stop. Only the first grant can throw:
/// a program that cannot get a token at all should not start.
///
/// ```swift
/// let broker = TokenBroker(store: VaultStore(location: path), secrets: secrets)
/// for try await event in TokenStream(request: TokenRequest(profile: "default"), source: .broker(broker)) {
///     switch event {
///     case .token(let grant): client.bearer = grant.token
///     case .renewalFailed(let failure): log(failure.reason)
///     }
/// }
/// ```
///
/// Renewal goes through `source`, so with a `TokenBroker` it is single
/// flight with every other process using the vault: if another one renewed
/// meanwhile, its token is taken and Tallyfy is not asked.
public struct TokenStream: AsyncSequence, Sendable {
    public typealias Element = Event

    public enum Event: Sendable {
        /// The first grant, then every renewed one (always a new token).
        case token(TokenGrant)
        /// One renewal attempt failed; the current grant stays in use.
        case renewalFailed(RenewalFailure)
    }

    /// A failed renewal attempt, never with a secret in it.
    public struct RenewalFailure: Sendable {
        /// Why, as the error message says it.
        public var reason: String
        /// The grant still in use.
        public var current: TokenGrant
        /// 1 for the first failure since the last success.
        public var attempt: Int
        /// When the next attempt is made.
        public var retryAt: Date
        /// Whether `current` had expired when this attempt failed.
        public var tokenHasExpired: Bool
    }

    /// How much longer than the current token a renewed one must last
    /// (a token expiring at the same moment is the same token, or as good).
    static let outlives: TimeInterval = 0.001

    public let request: TokenRequest
    public let source: TokenSource
    public let initial: TokenGrant?
    public let schedule: RenewalSchedule
    let environment: [String: String]

    /// `initial`: a grant the caller already has (it is yielded first, and
    /// not asked for again).
    public init(request: TokenRequest, source: TokenSource, initial: TokenGrant? = nil, schedule: RenewalSchedule = .standard,
        environment: [String: String] = ProcessInfo.processInfo.environment)
    {
        self.request = request
        self.source = source
        self.initial = initial
        self.schedule = schedule
        self.environment = environment
    }

    public func makeAsyncIterator() -> Iterator { Iterator(stream: self) }

    public struct Iterator: AsyncIteratorProtocol {
        let stream: TokenStream
        var current: TokenGrant?
        var lifetime: TimeInterval = 0
        var nextAttempt = Date()
        var failures = 0

        init(stream: TokenStream) { self.stream = stream }

        var now: Date { VaultClock.now(environment: stream.environment) }

        public mutating func next() async throws -> Event? {
            guard let current else {
                let first: TokenGrant
                if let initial = stream.initial { first = initial } else { first = try await stream.source.grant(stream.request) }
                accept(first)
                return .token(first)
            }
            while true {
                let wait = nextAttempt.timeIntervalSince(now)
                if wait > 0 {
                    // In slices of at most a minute, so a wall clock that
                    // jumped (a suspended laptop, a corrected clock) is noticed.
                    let slice = Swift.min(wait, 60)
                    do { try await Task.sleep(for: .milliseconds(Int64((slice * 1000).rounded(.up)))) } catch { return nil }
                }
                if Task.isCancelled { return nil }
                if now < nextAttempt { continue }  // not yet: sleep the rest
                return await renew(current)
            }
        }

        private mutating func accept(_ grant: TokenGrant) {
            let received = now
            current = grant
            failures = 0
            lifetime = Swift.max(0, grant.expiresAt.timeIntervalSince(received))
            nextAttempt = stream.schedule.renewalDate(
                expiresAt: grant.expiresAt, receivedAt: received, minimumLifetime: stream.request.minimumLifetime,
                random: Double.random(in: 0...1))
        }

        /// Asks for a token that outlives the current one: when another
        /// process renewed since, the sealed token already does, and Tallyfy
        /// is not asked. Any token that expires later will do: Tallyfy
        /// states expiries in whole seconds, so a rotation's token obtained a
        /// second after the current one outlives it by exactly one second;
        /// asking for a second more made the fleet renew again a few seconds
        /// after the rotation (found by tools/partition-test).
        private mutating func renew(_ current: TokenGrant) async -> Event {
            let request = stream.request.outliving(current, now: now)
            let reason: String
            do {
                let grant = try await stream.source.grant(request)
                if grant.renewalFailure == nil && grant.token != current.token {
                    accept(grant)
                    return .token(grant)
                }
                reason = grant.renewalFailure ?? "Tallyfy handed back the token in use"
            } catch let error as VaultError {
                reason = error.message
            } catch let error as LaunchError {
                reason = error.message
            } catch {
                reason = "renewal failed (\(type(of: error)))"
            }
            failures += 1
            let failedAt = now
            nextAttempt = stream.schedule.retryDate(
                afterFailure: failures, lifetime: lifetime, expiresAt: current.expiresAt, now: failedAt)
            return .renewalFailed(RenewalFailure(
                reason: reason, current: current, attempt: failures, retryAt: nextAttempt,
                tokenHasExpired: current.expiresAt <= failedAt))
        }
    }
}

extension TokenRequest {
    /// This request, asking for a token that outlives `current` (at `now`),
    /// however little longer (`TokenStream.outlives`): another process's
    /// sealed renewal is taken, else Tallyfy is asked. `never` and `always`
    /// become `whenStale`: a renewal must be allowed to renew, and must take
    /// another process's token. The one rule for keep-fresh and the proxy.
    func outliving(_ current: TokenGrant, now: Date) -> TokenRequest {
        var request = self
        if request.renewal == .never || request.renewal == .always { request.renewal = .whenStale }
        request.minimumLifetime = max(0, current.expiresAt.timeIntervalSince(now)) + TokenStream.outlives
        return request
    }
}

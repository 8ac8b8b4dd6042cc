import Foundation
import TallyfyVaultCore

/// When and how long to wait before asking Tallyfy again.
///
/// Networks and servers fail briefly: a dropped connection, a 503 during a
/// deploy, a 429 when a cron fleet wakes up at once. Retrying those a few
/// times with growing, jittered pauses turns most of them into successes
/// without hammering the server in lock-step with other clients. Answers
/// that will not change on their own (400, 401, 403, 404, 409, 422) are never
/// retried, and a server that asks for a longer pause than `maxRetryAfter`
/// is taken at its word: we give up and say so instead of sleeping for an
/// unbounded time inside a cron job.
package struct RetryPolicy: Sendable, Equatable {
    /// How many times a request is sent at most, the first one included.
    package var maxAttempts: Int
    /// The pause after the first failed attempt; it doubles after each further one.
    package var baseDelay: Duration
    /// The longest pause backoff alone will produce.
    package var maxDelay: Duration
    /// The longest `Retry-After` we are willing to honour. A server asking for
    /// more makes us give up (exit 75) rather than block a script for that long.
    package var maxRetryAfter: Duration

    package init(
        maxAttempts: Int = 4,
        baseDelay: Duration = .milliseconds(200),
        maxDelay: Duration = .seconds(5),
        maxRetryAfter: Duration = .seconds(30)
    ) {
        self.maxAttempts = maxAttempts
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.maxRetryAfter = maxRetryAfter
    }

    /// Four attempts, 0.2 s doubling up to 5 s, `Retry-After` honoured up to 30 s.
    package static let standard = RetryPolicy()

    /// No retries at all: one attempt, then the error.
    package static let none = RetryPolicy(maxAttempts: 1)

    /// How long to wait after the failed attempt number `attempt` (1-based)
    /// before the next one, or `nil` to give up.
    ///
    /// Gives up when `attempt` reached `maxAttempts`, or when the server's
    /// `Retry-After` (seconds or an HTTP-date) asks for more than
    /// `maxRetryAfter`. Otherwise the pause is exponential backoff with
    /// jitter, and never shorter than a `Retry-After` the server sent.
    package func delay(afterAttempt attempt: Int, retryAfter: String?) -> Duration? {
        delay(afterAttempt: attempt, retryAfter: retryAfter, now: Date(), jitter: Double.random(in: 0...1))
    }

    /// The deterministic core of `delay(afterAttempt:retryAfter:)`: `jitter`
    /// in 0...1 picks the pause between half and all of the backoff step, and
    /// `now` anchors an HTTP-date `Retry-After`.
    func delay(afterAttempt attempt: Int, retryAfter: String?, now: Date, jitter: Double) -> Duration? {
        guard attempt >= 1, attempt < maxAttempts else { return nil }

        // Exponential step, capped; computed in Double seconds so a large
        // attempt number cannot overflow.
        let base = Self.seconds(baseDelay)
        let cap = Self.seconds(maxDelay)
        let exponent = Double(min(attempt - 1, 62))
        let step = min(cap, base * pow(2, exponent))
        // "Equal jitter": between half and all of the step, so concurrent
        // clients spread out but no pause collapses to zero.
        let clampedJitter = min(max(jitter, 0), 1)
        var pause = step / 2 + step / 2 * clampedJitter

        if let retryAfter, let asked = Self.parseRetryAfter(retryAfter, now: now) {
            if asked > Self.seconds(maxRetryAfter) { return nil }
            pause = max(pause, asked)
        }
        return .nanoseconds(Int64((pause * 1e9).rounded()))
    }

    /// Whether an HTTP status is worth asking again for: 429 and every 5xx.
    /// Client errors (400, 401, 403, 404, 409, 422, …) describe the request,
    /// which a retry would not change.
    package static func isRetryable(status: UInt) -> Bool {
        status == 429 || (500...599).contains(status)
    }

    /// The seconds a `Retry-After` value asks for: a non-negative integer
    /// (`120`) or an HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`, also the
    /// obsolete RFC 850 and asctime forms). A date in the past means 0.
    /// Anything else is `nil` and is ignored.
    static func parseRetryAfter(_ value: String, now: Date) -> Double? {
        let text = value.trimmingCharacters(in: .whitespaces)
        guard !text.isEmpty else { return nil }
        if text.allSatisfy({ $0.isASCII && $0.isNumber }) {
            // Absurdly long digit strings saturate instead of failing, so
            // they still count as "longer than we will wait".
            return Double(text) ?? .infinity
        }
        for format in ["EEE, dd MMM yyyy HH:mm:ss zzz", "EEEE, dd-MMM-yy HH:mm:ss zzz", "EEE MMM d HH:mm:ss yyyy"] {
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "GMT")
            formatter.dateFormat = format
            if let date = formatter.date(from: text) {
                return max(0, date.timeIntervalSince(now))
            }
        }
        return nil
    }

    static func seconds(_ duration: Duration) -> Double {
        let parts = duration.components
        return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
    }
}

/// A failure worth another attempt, thrown by one attempt inside
/// `withRetries`. It carries the server's `Retry-After` (if any) and builds
/// the error to report when no attempt is left, so the final message can say
/// how many attempts were made.
struct TransientFailure: Error, Sendable {
    var retryAfter: String?
    var finalError: @Sendable (_ attempts: Int) -> VaultError
}

/// Runs `operation` until it returns, throws something other than a
/// `TransientFailure`, or the policy gives up.
///
/// The seam between the retry rules and the network: unit tests drive it
/// with a fake operation and a recording `sleep`, the client with real
/// requests and `Task.sleep`. `operation` receives the 1-based attempt number.
///
/// `deadline`, when given, bounds the whole call: a pause that would end at
/// or after it is not taken, and the last failure is reported at once, so a
/// caller never waits for an attempt that would have no time left.
func withRetries<T>(
    policy: RetryPolicy,
    deadline: ContinuousClock.Instant? = nil,
    sleep: (Duration) async throws -> Void,
    operation: (_ attempt: Int) async throws -> T
) async throws -> T {
    var attempt = 1
    while true {
        do {
            return try await operation(attempt)
        } catch let failure as TransientFailure {
            guard let pause = policy.delay(afterAttempt: attempt, retryAfter: failure.retryAfter) else {
                throw failure.finalError(attempt)
            }
            if let deadline, ContinuousClock.now + pause >= deadline {
                throw failure.finalError(attempt)
            }
            try await sleep(pause)
            attempt += 1
        }
    }
}

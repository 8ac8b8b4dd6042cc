import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

/// Records the pauses `withRetries` asks for instead of sleeping.
private actor SleepRecorder {
    var pauses: [Duration] = []
    func record(_ pause: Duration) { pauses.append(pause) }
}

@Suite struct RetryPolicyTests {
    let now = Date(timeIntervalSince1970: 1_700_000_000)

    @Test func standardDefaults() {
        let policy = RetryPolicy.standard
        #expect(policy.maxAttempts == 4)
        #expect(policy.baseDelay == .milliseconds(200))
        #expect(policy.maxDelay == .seconds(5))
        #expect(policy.maxRetryAfter == .seconds(30))
    }

    @Test(arguments: [429, 500, 502, 503, 504, 599] as [UInt])
    func retryableStatuses(status: UInt) {
        #expect(RetryPolicy.isRetryable(status: status))
    }

    @Test(arguments: [200, 301, 400, 401, 403, 404, 409, 422, 428, 600] as [UInt])
    func nonRetryableStatuses(status: UInt) {
        #expect(!RetryPolicy.isRetryable(status: status))
    }

    @Test func givesUpAfterTheLastAttempt() {
        let policy = RetryPolicy.standard
        #expect(policy.delay(afterAttempt: 3, retryAfter: nil) != nil)
        #expect(policy.delay(afterAttempt: 4, retryAfter: nil) == nil)
        #expect(policy.delay(afterAttempt: 5, retryAfter: nil) == nil)
        #expect(RetryPolicy.none.delay(afterAttempt: 1, retryAfter: nil) == nil)
    }

    @Test func backoffGrowsExponentiallyWithJitterWithinBounds() {
        let policy = RetryPolicy(maxAttempts: 10, baseDelay: .milliseconds(200), maxDelay: .seconds(5))
        // jitter 1 = the full step, jitter 0 = half of it
        #expect(policy.delay(afterAttempt: 1, retryAfter: nil, now: now, jitter: 1) == .milliseconds(200))
        #expect(policy.delay(afterAttempt: 1, retryAfter: nil, now: now, jitter: 0) == .milliseconds(100))
        #expect(policy.delay(afterAttempt: 2, retryAfter: nil, now: now, jitter: 1) == .milliseconds(400))
        #expect(policy.delay(afterAttempt: 3, retryAfter: nil, now: now, jitter: 1) == .milliseconds(800))
        // capped at maxDelay
        #expect(policy.delay(afterAttempt: 9, retryAfter: nil, now: now, jitter: 1) == .seconds(5))
        // the public, randomised form stays inside the bounds
        for _ in 0..<50 {
            let pause = policy.delay(afterAttempt: 2, retryAfter: nil)!
            #expect(pause >= .milliseconds(200) && pause <= .milliseconds(400))
        }
    }

    @Test func hugeAttemptNumbersDoNotOverflow() {
        let policy = RetryPolicy(maxAttempts: .max)
        #expect(policy.delay(afterAttempt: 10_000, retryAfter: nil, now: now, jitter: 1) == .seconds(5))
    }

    @Test func retryAfterSecondsIsHonoured() {
        let policy = RetryPolicy.standard
        #expect(policy.delay(afterAttempt: 1, retryAfter: "3", now: now, jitter: 1) == .seconds(3))
        // never shorter than the backoff step
        #expect(policy.delay(afterAttempt: 1, retryAfter: "0", now: now, jitter: 1) == .milliseconds(200))
        // at the cap is fine, above it gives up
        #expect(policy.delay(afterAttempt: 1, retryAfter: "30", now: now, jitter: 1) == .seconds(30))
        #expect(policy.delay(afterAttempt: 1, retryAfter: "31", now: now, jitter: 1) == nil)
        #expect(policy.delay(afterAttempt: 1, retryAfter: "99999999999999999999999", now: now, jitter: 1) == nil)
        // the attempt budget still applies
        #expect(policy.delay(afterAttempt: 4, retryAfter: "1", now: now, jitter: 1) == nil)
    }

    @Test func retryAfterHTTPDateIsHonoured() {
        let policy = RetryPolicy.standard
        // now = 2023-11-14T22:13:20Z
        #expect(policy.delay(afterAttempt: 1, retryAfter: "Tue, 14 Nov 2023 22:13:30 GMT", now: now, jitter: 1) == .seconds(10))
        #expect(policy.delay(afterAttempt: 1, retryAfter: "Tuesday, 14-Nov-23 22:13:25 GMT", now: now, jitter: 1) == .seconds(5))
        #expect(policy.delay(afterAttempt: 1, retryAfter: "Tue Nov 14 22:13:22 2023", now: now, jitter: 1) == .seconds(2))
        // in the past: just the backoff
        #expect(policy.delay(afterAttempt: 1, retryAfter: "Tue, 14 Nov 2023 22:00:00 GMT", now: now, jitter: 1) == .milliseconds(200))
        // an hour ahead: beyond the cap, give up
        #expect(policy.delay(afterAttempt: 1, retryAfter: "Tue, 14 Nov 2023 23:13:20 GMT", now: now, jitter: 1) == nil)
    }

    @Test(arguments: ["", "soon", "-5", "1.5", "Tue, 99 Nov 2023 22:13:30 GMT"])
    func unparseableRetryAfterIsIgnored(value: String) {
        #expect(RetryPolicy.standard.delay(afterAttempt: 1, retryAfter: value, now: now, jitter: 1) == .milliseconds(200))
    }

    // MARK: - The retry loop

    private func transient(_ retryAfter: String? = nil) -> TransientFailure {
        TransientFailure(retryAfter: retryAfter) { attempts in
            VaultError(.unavailable, "gave up after \(attempts) attempts")
        }
    }

    @Test func retriesTransientFailuresUntilTheBudgetIsSpent() async throws {
        let recorder = SleepRecorder()
        var attempts: [Int] = []
        let error = await #expect(throws: VaultError.self) {
            try await withRetries(policy: .standard, sleep: { await recorder.record($0) }) { attempt -> Int in
                attempts.append(attempt)
                throw self.transient()
            }
        }
        #expect(error?.message == "gave up after 4 attempts")
        #expect(attempts == [1, 2, 3, 4])
        let pauses = await recorder.pauses
        #expect(pauses.count == 3)
        #expect(pauses[0] <= .milliseconds(200) && pauses[2] <= .milliseconds(800))
    }

    @Test func succeedsAfterTransientFailures() async throws {
        let recorder = SleepRecorder()
        let value = try await withRetries(policy: .standard, sleep: { await recorder.record($0) }) { attempt -> String in
            if attempt < 3 { throw self.transient(attempt == 1 ? "2" : nil) }
            return "ok"
        }
        #expect(value == "ok")
        let pauses = await recorder.pauses
        #expect(pauses.count == 2)
        #expect(pauses[0] == .seconds(2))  // Retry-After honoured
    }

    @Test func otherErrorsAreNotRetried() async {
        let recorder = SleepRecorder()
        var attempts = 0
        let error = await #expect(throws: VaultError.self) {
            try await withRetries(policy: .standard, sleep: { await recorder.record($0) }) { _ -> Int in
                attempts += 1
                throw VaultError(.refused, "no")
            }
        }
        #expect(error?.kind == .refused)
        #expect(attempts == 1)
        #expect(await recorder.pauses.isEmpty)
    }

    @Test func aTooLongRetryAfterGivesUpAtOnce() async {
        let recorder = SleepRecorder()
        var attempts = 0
        await #expect(throws: VaultError.self) {
            try await withRetries(policy: .standard, sleep: { await recorder.record($0) }) { _ -> Int in
                attempts += 1
                throw self.transient("3600")
            }
        }
        #expect(attempts == 1)
        #expect(await recorder.pauses.isEmpty)
    }

    // MARK: - Final errors

    private func reply(_ status: UInt, _ headers: [(String, String)] = [], body: String = "") -> Reply {
        Reply(status: status, headers: HTTPHeaders(headers), body: Data(body.utf8))
    }

    @Test func persistent5xxIsUnavailable() {
        let error = TallyfyClient.statusAfterRetries(
            reply(503), what: "the token request", attempts: 4, policy: .standard, sensitive: [])
        #expect(error.kind == .unavailable)
        #expect(error.exitStatus == 69)
        #expect(error.message == "Tallyfy answered 503 Service Unavailable to the token request after 4 attempts")
    }

    @Test func persistent429IsTryLaterAndMentionsRetryAfter() {
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let error = TallyfyClient.statusAfterRetries(
            reply(429, [("Retry-After", "7")]), what: "the token request", attempts: 4, policy: .standard,
            sensitive: [], now: now)
        #expect(error.kind == .tryLater)
        #expect(error.exitStatus == 75)
        #expect(error.message.contains("429 Too Many Requests"))
        #expect(error.hint?.contains("Retry-After") == true)
        #expect(error.hint?.contains("7 s") == true)
        #expect(error.hint?.contains("try again after 2027-01-15T08:00:07Z") == true)

        let long = TallyfyClient.statusAfterRetries(
            reply(429, [("Retry-After", "600")]), what: "the token request", attempts: 1, policy: .standard, sensitive: [])
        #expect(long.message.hasSuffix("after 1 attempt"))
        #expect(long.hint?.contains("600 s") == true)
    }

    /// Tallyfy's 429: `RATE_LIMIT_EXCEEDED`, its message, `Retry-After`,
    /// `X-RateLimit-*` and a request ID all reach the user.
    @Test func tallyfyRateLimitAnswerIsReportedWithResetTimeQuotaAndRequestID() {
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let body = #"{"message":"You've reached the limit for API calls. Please try again later.","code":"RATE_LIMIT_EXCEEDED"}"#
        let error = TallyfyClient.statusAfterRetries(
            reply(429, [("Retry-After", "42"), ("X-RateLimit-Limit", "600"), ("X-RateLimit-Remaining", "0"),
                        ("X-Request-Id", "req-123")], body: body),
            what: "the token request", attempts: 4, policy: .standard, sensitive: [], now: now)
        #expect(error.exitStatus == 75)
        #expect(error.message.contains(#""You've reached the limit for API calls. Please try again later.""#))
        #expect(error.message.contains("(request ID req-123)"))
        #expect(error.hint?.contains("try again after 2027-01-15T08:00:42Z") == true)
        #expect(error.hint?.contains("0 of 600 requests left") == true)

        // Only X-RateLimit-Reset (Unix seconds): the wait comes from it.
        let reset = TallyfyClient.statusAfterRetries(
            reply(429, [("X-RateLimit-Reset", "1800000090")]), what: "the token request", attempts: 1,
            policy: .standard, sensitive: [], now: now)
        #expect(reset.hint?.contains("90 s (X-RateLimit-Reset)") == true)
    }

    /// Absurd waits never trap a date conversion; they are reported as unusable.
    @Test func absurdRateLimitWaitsAreReportedNotConverted() {
        for headers in [[("Retry-After", "99999999999999999999999999")], [("X-RateLimit-Reset", "1e300")],
                        [("Retry-After", "soon")]] {
            let error = TallyfyClient.statusAfterRetries(
                reply(429, headers), what: "the token request", attempts: 1, policy: .standard, sensitive: [])
            #expect(error.exitStatus == 75)
            #expect(error.hint?.contains("wait a minute") == true)
        }
    }

    @Test func serverDetailReadsBothShapesAndNeverEchoesSecrets() {
        let api = ServerDetail(body: Data(#"{"error":true,"code":"RESOURCE_NOT_FOUND","message":"Resource not found"}"#.utf8),
                               requestID: "abc-1")
        #expect(api == ServerDetail(code: "RESOURCE_NOT_FOUND", message: "Resource not found", requestID: "abc-1"))
        let oauth = ServerDetail(body: Data(#"{"error":"invalid_client","error_description":"Client authentication failed"}"#.utf8),
                                 requestID: nil)
        #expect(oauth == ServerDetail(code: "invalid_client", message: "Client authentication failed"))
        let echo = ServerDetail(body: Data(#"{"message":"bad secret s3cr3t-value"}"#.utf8), requestID: nil,
                                redacting: ["s3cr3t-value"])
        #expect(echo.message == nil)
        let hostile = ServerDetail(body: Data("{\"message\":\"a\\u001b[31mred\\nline\\u202e\"}".utf8), requestID: "bad id\u{1b}")
        #expect(hostile.message == "a [31mred line")
        #expect(hostile.requestID == nil)
        #expect(ServerDetail(body: Data("<html>".utf8), requestID: nil) == ServerDetail())
    }

    @Test func transportErrorsAreSortedBySafety() {
        let refused = NIOCore.IOError(errnoCode: ECONNREFUSED, reason: "connect")
        #expect(TallyfyClient.classify(refused, timeout: .seconds(30)) == .beforeSending("connection refused"))
        #expect(TallyfyClient.classify(HTTPClientError.connectTimeout, timeout: .seconds(30)) == .beforeSending("connection timed out"))
        #expect(TallyfyClient.classify(HTTPClientError.deadlineExceeded, timeout: .seconds(2)) == .afterSending("no answer within 2 s"))
        #expect(TallyfyClient.classify(HTTPClientError.readTimeout, timeout: .milliseconds(1500)) == .afterSending("no answer within 1.5 s"))
        #expect(TallyfyClient.classify(HTTPClientError.remoteConnectionClosed, timeout: .seconds(30))
            == .afterSending("the server closed the connection"))
        if case .permanent = TallyfyClient.classify(HTTPClientError.invalidURL, timeout: .seconds(30)) {} else {
            Issue.record("invalidURL should not be retried")
        }
    }

    @Test func timeoutOverrideFromTheEnvironment() {
        #expect(TallyfyClient.timeoutOverride("2") == .seconds(2))
        #expect(TallyfyClient.timeoutOverride(" 0.5 ") == .milliseconds(500))
        #expect(TallyfyClient.timeoutOverride(nil) == nil)
        #expect(TallyfyClient.timeoutOverride("") == nil)
        #expect(TallyfyClient.timeoutOverride("0") == nil)
        #expect(TallyfyClient.timeoutOverride("-3") == nil)
        #expect(TallyfyClient.timeoutOverride("fast") == nil)
        #expect(TallyfyClient.timeoutOverride("inf") == nil)
    }

    // MARK: - Against a closed loopback port (no server needed)

    /// A loopback port nobody listens on: bound, then released.
    private func closedPort() throws -> Int {
        let group = MultiThreadedEventLoopGroup.singleton
        let channel = try ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).wait()
        let port = channel.localAddress!.port!
        try channel.close().wait()
        return port
    }

    @Test func connectionRefusedIsRetriedThenUnavailable() async throws {
        let port = try closedPort()
        let recorder = SleepRecorder()
        let client = TallyfyClient(
            connectTimeout: .seconds(2), requestTimeout: .seconds(5), retry: .standard,
            totalTimeout: .seconds(600),  // counts attempts, not time: a loaded machine must not cut them short
            environment: [:], sleep: { await recorder.record($0) })
        let error = await #expect(throws: VaultError.self) {
            _ = try await client.applicationToken(
                tokenURL: URL(string: "http://127.0.0.1:\(port)/oauth/token")!,
                clientID: "id", clientSecret: "s3cret&more", now: Date())
        }
        await client.shutdown()
        #expect(error?.kind == .unavailable)
        #expect(error?.message.contains("could not reach Tallyfy at 127.0.0.1:\(port) (connection refused)") == true)
        #expect(error?.message.contains("4 attempts") == true)
        #expect(error.map { !$0.description.contains("s3cret") } == true)
        #expect(await recorder.pauses.count == 3)
    }

    @Test func createUserIsRetriedOnConnectionRefusedToo() async throws {
        let port = try closedPort()
        let recorder = SleepRecorder()
        let client = TallyfyClient(
            connectTimeout: .seconds(2), requestTimeout: .seconds(5), retry: RetryPolicy(maxAttempts: 2),
            totalTimeout: .seconds(600),
            environment: [:], sleep: { await recorder.record($0) })
        let error = await #expect(throws: VaultError.self) {
            try await client.createUser(
                apiURL: URL(string: "http://localhost:\(port)/api/")!, orgID: "org1", applicationToken: "tok",
                user: NewUser(email: "a@example.com", firstName: "A", lastName: "B"))
        }
        await client.shutdown()
        #expect(error?.kind == .unavailable)
        #expect(await recorder.pauses.count == 1)
    }

    @Test func plainHTTPToARemoteHostIsRefusedBeforeSending() async throws {
        let client = TallyfyClient(
            connectTimeout: .seconds(1), requestTimeout: .seconds(1), retry: .none,
            environment: [:], sleep: { _ in })
        let error = await #expect(throws: VaultError.self) {
            _ = try await client.applicationToken(
                tokenURL: URL(string: "http://go.tallyfy.com/oauth/token")!, clientID: "id", clientSecret: "s", now: Date())
        }
        await client.shutdown()
        #expect(error?.kind == .usage)
    }
}

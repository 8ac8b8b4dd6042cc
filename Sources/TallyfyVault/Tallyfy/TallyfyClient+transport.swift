import AsyncHTTPClient
import Foundation
import TallyfyVaultCore
import NIOCore
import NIOSSL
import NIOHTTP1
import NIOPosix
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One of the three calls the vault makes, described for retries and messages.
struct Endpoint: Sendable {
    /// For messages: "the token request", "the user creation request", …
    let what: String
    let url: URL
    /// Whether a request that may already have reached the server (it timed
    /// out or the connection dropped after sending) may be sent again: true
    /// for token requests, which only mint another token; false for user
    /// creation, which is not idempotent.
    let afterSendRetryIsSafe: Bool
    /// Which statuses are worth another attempt.
    let retryableStatus: @Sendable (UInt) -> Bool
    /// Values this request carried that must never be echoed back in a
    /// message (the client secret, the bearer token), should a server
    /// quote them in its error text.
    var sensitive: [String] = []

    /// `host:port` for messages; IPv6 hosts in brackets.
    var hostPort: String {
        var host = url.host ?? "?"
        if host.contains(":"), !host.hasPrefix("[") { host = "[\(host)]" }
        let port = url.port ?? (url.scheme?.lowercased() == "http" ? 80 : 443)
        return "\(host):\(port)"
    }
}

/// An answer that needs no further attempt: a success, or a status that a
/// retry would not change.
struct Reply: Sendable {
    let status: UInt
    let headers: HTTPHeaders
    let body: Data

    init(status: UInt, headers: HTTPHeaders = [:], body: Data) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    init(status: UInt, contentType: String?, body: Data) {
        var headers = HTTPHeaders()
        if let contentType { headers.add(name: "Content-Type", value: contentType) }
        self.init(status: status, headers: headers, body: body)
    }

    var contentType: String? { headers.first(name: "Content-Type") }

    var isSuccess: Bool { (200...299).contains(status) }

    /// `503 Service Unavailable`: the code and the standard phrase, never the
    /// phrase the server sent.
    var statusText: String { Self.statusText(status) }

    static func statusText(_ status: UInt) -> String {
        let phrase = HTTPResponseStatus(statusCode: Int(status)).reasonPhrase
        return phrase.isEmpty ? "HTTP \(status)" : "\(status) \(phrase)"
    }

    /// The media type only (`text/html`), reduced to token characters.
    var contentTypeText: String {
        guard let contentType else { return "none" }
        let media = contentType.split(separator: ";").first.map(String.init) ?? ""
        let cleaned = media.trimmingCharacters(in: .whitespaces).lowercased()
            .filter { $0.isASCII && ($0.isLetter || $0.isNumber || "/+-._".contains($0)) }
        return cleaned.isEmpty ? "none" : String(cleaned.prefix(64))
    }
}

/// Carries one attempt to Tallyfy in place of the HTTP client, and brings
/// back its answer: how tests put a scripted Tallyfy in the process, as
/// `EtcdTransport` does for etcd. Everything above it (the deadline of the
/// attempt, retries, the mapping of answers to `VaultError`s) runs as with
/// the network.
typealias TallyfyTransport = @Sendable (_ request: HTTPClientRequest) async throws -> Reply

/// What went wrong below HTTP, and whether the request can have reached the server.
enum TransportFailure: Equatable {
    /// No byte of the request left this machine: always safe to retry.
    case beforeSending(String)
    /// The request may have been received (timeout, dropped connection).
    case afterSending(String)
    /// Will not get better by retrying (TLS certificate, invalid request).
    case permanent(String)
}

extension TallyfyClient {
    /// When the caller gives up on the call (`TokenBroker.patiently`: a call
    /// under the vault lock), so that no retry is begun too late to be answered.
    @TaskLocal static var answerBy: ContinuousClock.Instant?
    static let leastTimeForAnAttempt = Duration.milliseconds(500)

    /// Sends `request` under the retry policy and returns the first answer
    /// that needs no further attempt. Throws `VaultError` for transport
    /// failures and for retryable statuses once attempts run out.
    ///
    /// Time is bounded twice: each attempt (connect, send, headers and the
    /// whole body) ends within `requestTimeout`, and the call as a whole,
    /// retries and pauses included, within `totalTimeout` (by default three
    /// times `requestTimeout`). AsyncHTTPClient's own deadline stops at the
    /// response head, so a server that trickles its body one byte a second
    /// would otherwise hold the caller (and the vault lock) for as long as
    /// it likes.
    func send(_ request: HTTPClientRequest, to endpoint: Endpoint) async throws -> Reply {
        let overall = ContinuousClock.now + totalTimeout
        var retryUntil = overall
        if let answerBy = Self.answerBy {
            // No retry that would leave too little time for an answer: one
            // begun just before the caller gives up may still be answered,
            // and the token Tallyfy issues then is one nobody keeps. (The
            // caller stops the attempt in flight itself, and says why.)
            retryUntil = min(overall, answerBy - Self.leastTimeForAnAttempt)
        }
        return try await withRetries(policy: retry, deadline: retryUntil, sleep: sleep) { _ in
            let left = overall - ContinuousClock.now
            return try await self.attempt(request, to: endpoint, within: min(self.requestTimeout, left))
        }
    }

    /// What one exchange produced before its deadline.
    private enum Exchange: Sendable {
        case answered(status: UInt, headers: HTTPHeaders, body: Data)
        case timedOut
    }

    /// One attempt, all of it within `limit`. Transient problems are thrown
    /// as `TransientFailure`.
    private func attempt(_ request: HTTPClientRequest, to endpoint: Endpoint, within limit: Duration) async throws -> Reply {
        let status: UInt
        let headers: HTTPHeaders
        let body: Data
        do {
            switch try await exchange(request, within: limit) {
            case .answered(let answeredStatus, let answeredHeaders, let answeredBody):
                (status, headers, body) = (answeredStatus, answeredHeaders, answeredBody)
            case .timedOut:
                throw HTTPClientError.deadlineExceeded
            }
        } catch {
            try Task.checkCancellation()
            throw transportError(error, endpoint: endpoint)
        }

        let reply = Reply(status: status, headers: headers, body: body)
        if endpoint.retryableStatus(status) {
            // A 429 with only `X-RateLimit-Reset` is honoured like a `Retry-After`.
            let retryAfter = headers.first(name: "Retry-After") ?? (status == 429
                ? RateLimitInfo(headers, now: Date()).waitSeconds.map { String(Int($0.rounded(.up))) } : nil)
            let what = endpoint.what
            let policy = retry
            let sensitive = endpoint.sensitive
            throw TransientFailure(retryAfter: retryAfter) { attempts in
                Self.statusAfterRetries(reply, what: what, attempts: attempts, policy: policy, sensitive: sensitive)
            }
        }
        return reply
    }

    /// Races the request (head and whole body) against a timer; whichever
    /// ends first wins and the other is cancelled. Cancelling the request
    /// task closes the connection, also while its body is being read.
    private func exchange(_ request: HTTPClientRequest, within limit: Duration) async throws -> Exchange {
        let http = self.http
        let transport = self.transport
        let timeout = Self.timeAmount(limit)
        return try await withThrowingTaskGroup(of: Exchange.self) { group in
            group.addTask {
                if let transport {
                    let reply = try await transport(request)
                    return .answered(status: reply.status, headers: reply.headers, body: reply.body)
                }
                let response = try await http.execute(request, timeout: timeout)
                var body = Data()
                do {
                    let buffer = try await response.body.collect(upTo: Self.maxBodyBytes)
                    body = Data(buffer.readableBytesView)
                } catch is NIOTooManyBytesError {
                    body = Data()  // far too long for any answer we parse: treated as unparseable
                }
                return .answered(status: response.status.code, headers: response.headers, body: body)
            }
            group.addTask {
                try await Task.sleep(for: limit)
                return .timedOut
            }
            defer { group.cancelAll() }
            guard let first = try await group.next() else { return .timedOut }
            return first
        }
    }

    /// The error for a 429 or 5xx that persisted through every attempt (or
    /// whose `Retry-After` was longer than we wait, or than the time left).
    /// A 429 says when Tallyfy will take requests again (from `Retry-After`,
    /// else `X-RateLimit-Reset`), and both carry Tallyfy's own message and
    /// `X-Request-Id` when it sent them.
    static func statusAfterRetries(_ reply: Reply, what: String, attempts: Int, policy: RetryPolicy,
                                   sensitive: [String], now: Date = Date()) -> VaultError {
        let tries = attempts == 1 ? "1 attempt" : "\(attempts) attempts"
        let detail = ServerDetail(reply, redacting: sensitive)
        let message = "Tallyfy answered \(reply.statusText) to \(what) after \(tries)" + detail.suffix
        guard reply.status == 429 else {
            return VaultError(.unavailable, message, hint: "Tallyfy may be down or overloaded; try again later")
        }
        let limits = RateLimitInfo(reply.headers, now: now)
        var hint: String
        if let wait = limits.waitSeconds {
            let seconds = Int(wait.rounded(.up))
            let until = ChildEnvironment.rfc3339(now.addingTimeInterval(Double(seconds)))
            let longer = wait > RetryPolicy.seconds(policy.maxRetryAfter) ? ", longer than the vault waits" : ""
            hint = "Tallyfy asked to wait \(seconds) s (\(limits.source))\(longer); try again after \(until)"
        } else {
            hint = reply.headers.first(name: "Retry-After") == nil
                ? "Tallyfy is rate-limiting this client (no Retry-After given); wait a minute and try again"
                : "Tallyfy is rate-limiting this client and asked for an unusable wait (Retry-After); wait a minute and try again"
        }
        if let quota = limits.quotaText { hint += "; \(quota)" }
        return VaultError(.tryLater, message, hint: hint)
    }

    /// Turns an AsyncHTTPClient / NIO error into either a `TransientFailure`
    /// (to retry) or a final `VaultError`, by whether the request may have
    /// reached the server and whether the endpoint tolerates a repeat.
    private func transportError(_ error: Error, endpoint: Endpoint) -> Error {
        let failure = Self.classify(error, timeout: requestTimeout)
        let hostPort = endpoint.hostPort
        let reachHint = "check the network, that Tallyfy (or the emulator) is reachable at that address, "
            + "and the profile's URLs (`tallyfy-vault credentials show`)"
        switch failure {
        case .beforeSending(let reason):
            return TransientFailure(retryAfter: nil) { attempts in
                let tries = attempts == 1 ? "" : " after \(attempts) attempts"
                return VaultError(.unavailable, "could not reach Tallyfy at \(hostPort) (\(reason))\(tries)", hint: reachHint)
            }
        case .afterSending(let reason) where endpoint.afterSendRetryIsSafe:
            let what = endpoint.what
            return TransientFailure(retryAfter: nil) { attempts in
                let tries = attempts == 1 ? "" : " after \(attempts) attempts"
                return VaultError(.unavailable, "\(what) to Tallyfy at \(hostPort) failed (\(reason))\(tries)", hint: reachHint)
            }
        case .afterSending(let reason):
            return VaultError(
                .unavailable,
                "\(endpoint.what) to Tallyfy at \(hostPort) failed (\(reason)); it was not repeated because it may have been carried out",
                hint: "check whether it took effect (e.g. whether the user now exists) before trying again"
            )
        case .permanent(let reason):
            return VaultError(.unavailable, "could not talk to Tallyfy at \(hostPort) (\(reason))", hint: reachHint)
        }
    }

    /// Sorts an error from the HTTP stack. Descriptions are built from error
    /// kinds, never from request or response content.
    static func classify(_ error: Error, timeout: Duration) -> TransportFailure {
        let seconds = RetryPolicy.seconds(timeout)
        let timeoutText = seconds == seconds.rounded() ? "\(Int(seconds)) s" : String(format: "%.1f s", seconds)

        if let error = error as? HTTPClientError {
            switch error {
            case .connectTimeout: return .beforeSending("connection timed out")
            case .tlsHandshakeTimeout: return .beforeSending("TLS handshake timed out")
            case .getConnectionFromPoolTimeout: return .beforeSending("timed out waiting for a connection")
            case .socksHandshakeTimeout, .httpProxyHandshakeTimeout: return .beforeSending("proxy handshake timed out")
            case .readTimeout, .deadlineExceeded: return .afterSending("no answer within \(timeoutText)")
            case .writeTimeout: return .afterSending("timed out sending the request")
            case .remoteConnectionClosed: return .afterSending("the server closed the connection")
            default: return .permanent("HTTP client error: \(error.shortDescription)")
            }
        }
        if let error = error as? NIOConnectionError {
            if let first = error.connectionErrors.first {
                return .beforeSending(connectReason(first.error))
            }
            if error.dnsAError != nil || error.dnsAAAAError != nil {
                return .beforeSending("could not resolve the host name")
            }
            return .beforeSending("could not connect")
        }
        if let error = error as? ChannelError {
            switch error {
            case .connectTimeout: return .beforeSending("connection timed out")
            case .ioOnClosedChannel, .eof, .outputClosed, .inputClosed, .alreadyClosed:
                return .afterSending("the connection was closed")
            default: return .permanent("connection error")
            }
        }
        if let error = error as? IOError {
            switch error.errnoCode {
            case ECONNREFUSED, ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL:
                return .beforeSending(connectReason(error))
            case ECONNRESET, EPIPE, ECONNABORTED:
                return .afterSending("the connection was reset")
            case ETIMEDOUT:
                return .afterSending("the connection timed out")
            default:
                return .permanent("I/O error: \(String(cString: strerror(error.errnoCode)))")
            }
        }
        if error is SocketAddressError {
            return .beforeSending("could not resolve the host name")
        }
        if error is NIOSSLError || error is NIOSSLExtraError || error is BoringSSLError {
            let description = String(describing: error).lowercased()
            if description.contains("certificate") || description.contains("verify") {
                return .permanent("TLS certificate verification failed")
            }
            return .permanent("TLS handshake failed")
        }
        return .permanent("unexpected network error: \(String(reflecting: type(of: error)))")
    }

    /// A short reason for a failed connection attempt: "connection refused".
    private static func connectReason(_ error: Error) -> String {
        if let error = error as? IOError {
            switch error.errnoCode {
            case ECONNREFUSED: return "connection refused"
            case ENETUNREACH: return "network unreachable"
            case EHOSTUNREACH: return "host unreachable"
            case ETIMEDOUT: return "connection timed out"
            default: return String(cString: strerror(error.errnoCode))
            }
        }
        if let error = error as? ChannelError, case .connectTimeout = error { return "connection timed out" }
        if error is SocketAddressError { return "could not resolve the host name" }
        return "could not connect"
    }
}

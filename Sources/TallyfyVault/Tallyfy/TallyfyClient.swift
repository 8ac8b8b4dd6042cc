import AsyncHTTPClient
import Synchronization
import Foundation
import TallyfyVaultCore
import NIOCore
import NIOHTTP1

/// Talks to Tallyfy's OAuth token endpoint and its application API.
///
/// It owns a dedicated `HTTPClient` (not `HTTPClient.shared`) so its
/// timeouts, its refusal to follow redirects (a redirected token request
/// would carry the client secret elsewhere) and its connection-retry
/// behaviour are ours alone. Retries happen here, in one place, under a
/// `RetryPolicy`, and only where they are safe; every failure becomes a
/// `VaultError` whose message names the host, the status or the cause and
/// never contains a secret, a token or a server's body (only Tallyfy's
/// cleaned error message and request ID: see `ServerDetail`).
///
/// Call `shutdown()` when done (AsyncHTTPClient requires it); as a safety
/// net the underlying client is also shut down, without waiting, when this
/// object is released.
package final class TallyfyClient: Sendable {
    let http: HTTPClient
    /// How long one attempt may take, from connecting to the last byte of the answer.
    let requestTimeout: Duration
    /// How long one call may take in all, every retry and pause included.
    let totalTimeout: Duration
    let retry: RetryPolicy
    /// How the client waits between attempts; tests substitute a recorder.
    let sleep: @Sendable (Duration) async throws -> Void
    /// Carries each attempt instead of `http` (tests: a scripted Tallyfy).
    let transport: TallyfyTransport?

    /// The environment variable that overrides `requestTimeout`, in seconds
    /// (e.g. `2` or `0.5`). It exists so tests against a deliberately slow
    /// server finish quickly, and lets users with slow links allow more time.
    /// Values that are not a positive number are ignored.
    package static let timeoutEnvironmentVariable = "TALLYFY_VAULT_HTTP_TIMEOUT"

    /// The largest answer body read; anything longer is not a token answer.
    static let maxBodyBytes = 1 << 20

    /// - Parameters:
    ///   - connectTimeout: how long establishing a connection (TCP and TLS) may take.
    ///   - requestTimeout: how long each attempt may take in all; overridden
    ///     by `TALLYFY_VAULT_HTTP_TIMEOUT` (seconds) when that is set.
    ///   - retry: when to try again after a failure that may be transient.
    ///   - totalTimeout: how long one call (a token request, a user creation)
    ///     may take with all its retries and pauses; by default three times
    ///     the request timeout (90 s, or 9 s with `TALLYFY_VAULT_HTTP_TIMEOUT=3`).
    package convenience init(
        connectTimeout: Duration = .seconds(5),
        requestTimeout: Duration = .seconds(30),
        retry: RetryPolicy = .standard,
        totalTimeout: Duration? = nil
    ) {
        self.init(
            connectTimeout: connectTimeout,
            requestTimeout: requestTimeout,
            retry: retry,
            totalTimeout: totalTimeout,
            environment: ProcessInfo.processInfo.environment,
            sleep: { try await Task.sleep(for: $0) }
        )
    }

    init(
        connectTimeout: Duration,
        requestTimeout: Duration,
        retry: RetryPolicy,
        totalTimeout: Duration? = nil,
        environment: [String: String],
        sleep: @escaping @Sendable (Duration) async throws -> Void,
        transport: TallyfyTransport? = nil
    ) {
        let request = Self.timeoutOverride(environment[Self.timeoutEnvironmentVariable]) ?? requestTimeout
        // A connect timeout longer than the whole attempt would never fire.
        let connect = min(connectTimeout, request)

        var configuration = HTTPClient.Configuration.http1Only()
        configuration.timeout = .init(connect: Self.timeAmount(connect), read: Self.timeAmount(request))
        // A redirect would replay the client secret or a bearer token to
        // wherever the Location points, possibly over plain HTTP: never.
        configuration.redirectConfiguration = .disallow
        // AsyncHTTPClient would otherwise keep re-trying a refused
        // connection until the request deadline; our policy decides instead.
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.decompression = .disabled
        // One request per connection. A request written to a kept-alive
        // connection while the network drops packets stays queued in this
        // machine's kernel, and TCP still delivers it once the network is
        // back, also after the caller gave up and closed the connection: a
        // token issued for a request nobody waits for any longer is one
        // nobody keeps, so the next process renews again (and a Tallyfy that
        // revokes on reissue revokes the token the fleet is using). On a new
        // connection, a request whose handshake never got through is gone
        // with it. Found by tools/partition-test (a client cut from Tallyfy);
        // token requests come days apart, so the handshake costs nothing.
        configuration.maximumUsesPerConnection = 1

        self.http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
        self.requestTimeout = request
        self.totalTimeout = totalTimeout ?? request * 3
        self.retry = retry
        self.sleep = sleep
        self.transport = transport
    }

    deinit {
        // Safety net: AsyncHTTPClient traps in debug builds when a client is
        // released without being shut down. This is a no-op after `shutdown()`.
        http.shutdown { _ in }
    }

    /// Closes connections and releases the underlying HTTP client. Call it
    /// once you are done; requests made afterwards fail.
    package func shutdown() async {
        try? await http.shutdown()
    }

    /// Seconds from `TALLYFY_VAULT_HTTP_TIMEOUT`, when positive and sane.
    static func timeoutOverride(_ value: String?) -> Duration? {
        guard let text = value?.trimmingCharacters(in: .whitespaces), !text.isEmpty,
              let seconds = Double(text), seconds.isFinite, seconds > 0, seconds <= 86_400
        else { return nil }
        return .nanoseconds(Int64((seconds * 1e9).rounded()))
    }

    static func timeAmount(_ duration: Duration) -> TimeAmount {
        let parts = duration.components
        return .nanoseconds(parts.seconds * 1_000_000_000 + parts.attoseconds / 1_000_000_000)
    }

    // MARK: - The client-credentials flow

    /// Runs the OAuth 2.0 client-credentials flow: `POST {tokenURL}` with
    /// `grant_type=client_credentials`, the client ID and secret and
    /// `scope=*`, form-encoded. `now` is when the request is made; the
    /// token's expiry counts from it (`expires_in`, or the JWT `exp` if
    /// earlier), which errs on the side of renewing early.
    ///
    /// Errors: `.refused` (77) for `invalid_client` and other rejected
    /// credentials; `.configuration` (78) for a request Tallyfy calls
    /// malformed; `.tryLater` (75) for 429; `.unavailable` (69) when Tallyfy
    /// cannot be reached, keeps answering 5xx, or answers something that is
    /// not a token.
    package func applicationToken(tokenURL: URL, clientID: String, clientSecret: String, now: Date) async throws -> IssuedToken {
        let url = try EndpointURL.validate(tokenURL.absoluteString, name: "token URL")
        let endpoint = Endpoint(
            what: "the token request", url: url, afterSendRetryIsSafe: true,
            retryableStatus: RetryPolicy.isRetryable(status:), sensitive: [clientSecret]
        )
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: Self.userAgent)
        let form = FormEncoding.encode([
            ("grant_type", "client_credentials"),
            ("client_id", clientID),
            ("client_secret", clientSecret),
            ("scope", "*"),
        ])
        request.body = .bytes(ByteBuffer(string: form))

        let reply = try await send(request, to: endpoint)
        if reply.isSuccess {
            return try token(from: reply, endpoint: endpoint, receivedAt: now)
        }
        throw tokenEndpointError(reply, endpoint: endpoint)
    }

    /// The token URLs Tallyfy's own pages name, most recently documented
    /// first: the third-party application guide
    /// (tallyfy/documentation, open-api/access-api-as-a-third-party-application-instead-of-a-user.mdx),
    /// the client-credentials guide the vault was built from (and its
    /// default), and the API integration guide (how-to-integrate-with-tallyfy-using-api.mdx).
    package static let documentedTokenURLs = [
        "https://account.tallyfy.com/oauth/token",
        "https://go.tallyfy.com/oauth/token",
        "https://go.tallyfy.com/api/oauth/token",
    ]

    /// The hint for a token URL that is not an OAuth token endpoint at all.
    static var tokenURLHint: String {
        "the token URL may be wrong: Tallyfy documents " + documentedTokenURLs.joined(separator: ", ")
            + "; set one with `tallyfy-vault credentials set --token-url URL …`, "
            + "or let `--token-url discover` find the one that answers (it asks without the secret)"
    }

    /// Maps a non-2xx answer of the token endpoint to a `VaultError`: the
    /// RFC 6749 §5.2 error codes by name, Tallyfy's API error shape by its
    /// message, anything else by status. A 404, 405 or redirect means the
    /// URL is not a token endpoint, and the message names the documented ones.
    func tokenEndpointError(_ reply: Reply, endpoint: Endpoint) -> VaultError {
        let credentialsHint = "check the profile's client ID and secret with `tallyfy-vault credentials show`; "
            + "store the right ones with `tallyfy-vault credentials set` or `tallyfy-vault rotate-secret`"
        let detail = ServerDetail(reply, redacting: endpoint.sensitive)
        switch errorCode(in: reply.body) {
        case "invalid_client":
            return VaultError(.refused, "Tallyfy refused the client credentials (invalid_client)" + detail.requestSuffix,
                              hint: credentialsHint + "; Tallyfy's client IDs are numeric", cause: .tallyfyRefusedCredentials)
        case let code? where code == "invalid_grant" || code == "unauthorized_client":
            return VaultError(
                .refused, "Tallyfy refused the token request (\(code))" + detail.suffix,
                hint: "this client may not be allowed the client-credentials grant; ask Tallyfy Support to check the client"
            )
        case let code? where ["unsupported_grant_type", "invalid_scope", "invalid_request"].contains(code):
            return VaultError(
                .configuration, "Tallyfy rejected the token request (\(code))" + detail.suffix,
                hint: Self.tokenURLHint
            )
        default:
            break
        }
        switch reply.status {
        case 401:
            return VaultError(.refused, "Tallyfy refused the client credentials (\(reply.statusText))" + detail.suffix,
                              hint: credentialsHint, cause: .tallyfyRefusedCredentials)
        case 403:
            return VaultError(.refused, "Tallyfy refused the token request (\(reply.statusText))" + detail.suffix,
                              hint: credentialsHint)
        case 404, 405:
            return VaultError(
                .configuration,
                "\(endpoint.hostPort)\(endpoint.url.path) is not an OAuth token endpoint (\(reply.statusText) to the token request)" + detail.suffix,
                hint: Self.tokenURLHint
            )
        case 300...399:
            return VaultError(
                .configuration,
                "Tallyfy answered the token request at \(endpoint.hostPort) with a redirect (\(reply.statusText)), which the vault does not follow: the secret must not go elsewhere",
                hint: Self.tokenURLHint
            )
        case 400...499:
            return VaultError(
                .configuration, "Tallyfy answered \(reply.statusText) to the token request at \(endpoint.hostPort)" + detail.suffix,
                hint: Self.tokenURLHint
            )
        default:
            return unexpectedStatus(reply, endpoint: endpoint)
        }
    }

    // MARK: - Shared pieces

    static let userAgent = "tallyfy-vault"

    /// Parses a token answer, or reports an unexpected response without
    /// ever echoing the body.
    func token(from reply: Reply, endpoint: Endpoint, receivedAt: Date) throws -> IssuedToken {
        guard let parsed = TokenResponse.decode(reply.body) else {
            throw unexpectedResponse(reply, endpoint: endpoint,
                                     detail: "no JSON token with a Bearer access_token and a positive expires_in")
        }
        guard let issued = parsed.issued(receivedAt: receivedAt) else {
            throw unexpectedResponse(reply, endpoint: endpoint,
                                     detail: "neither expires_in nor the token says when it expires")
        }
        return issued
    }

    func unexpectedResponse(_ reply: Reply, endpoint: Endpoint, detail: String) -> VaultError {
        VaultError(
            .unavailable,
            "Tallyfy answered with an unexpected response (HTTP \(reply.status), content-type \(reply.contentTypeText))",
            hint: "the answer to \(endpoint.what) at \(endpoint.hostPort) was not usable: \(detail); "
                + "check that the URL points at Tallyfy and not at a proxy or login page, or try again later"
        )
    }

    /// A status no rule covers: a redirect, an odd 1xx/2xx, a 5xx that was not retried.
    func unexpectedStatus(_ reply: Reply, endpoint: Endpoint) -> VaultError {
        if (300...399).contains(reply.status) {
            return VaultError(
                .unavailable,
                "Tallyfy answered \(endpoint.what) at \(endpoint.hostPort) with a redirect (\(reply.statusText)), which the vault does not follow",
                hint: "use the final URL in the profile (`tallyfy-vault credentials set`), with https://"
            )
        }
        return VaultError(
            .unavailable,
            "Tallyfy answered \(reply.statusText) to \(endpoint.what) at \(endpoint.hostPort)"
                + ServerDetail(reply, redacting: endpoint.sensitive).suffix,
            hint: "try again later; if it persists, check the profile's URLs with `tallyfy-vault credentials show`"
        )
    }
}

/// `application/x-www-form-urlencoded` as browsers and `URLSearchParams`
/// write it: every byte but ASCII letters, digits and `*-._` percent-encoded
/// from UTF-8, space as `+`. A secret may hold `&`, `=`, `+`, spaces or
/// any Unicode and still arrive intact.
enum FormEncoding {
    static func encode(_ pairs: [(String, String)]) -> String {
        pairs.map { "\(encodeComponent($0.0))=\(encodeComponent($0.1))" }.joined(separator: "&")
    }

    static func encodeComponent(_ value: String) -> String {
        var out = ""
        out.reserveCapacity(value.utf8.count)
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "*"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: " "):
                out.append("+")
            default:
                out.append(percentEscape(byte))
            }
        }
        return out
    }
}

/// `%XX` with upper-case hex, as RFC 3986 recommends.
func percentEscape(_ byte: UInt8) -> String {
    let digits = Array("0123456789ABCDEF")
    return "%" + String(digits[Int(byte >> 4)]) + String(digits[Int(byte & 0x0F)])
}

extension TallyfyClient {
    private static let processClient = Mutex<TallyfyClient?>(nil)

    /// The process's one client, made on first use (with the timeouts from
    /// `TALLYFY_VAULT_HTTP_TIMEOUT`). Shut it down with `shutdownShared()`
    /// before the program ends.
    package static var shared: TallyfyClient {
        processClient.withLock { client in
            if let client { return client }
            let made = TallyfyClient()
            client = made
            return made
        }
    }

    /// Whether `shared` was ever made (and not shut down since).
    package static var hasShared: Bool { processClient.withLock { $0 != nil } }

    /// Shuts the shared client down; a later `shared` makes a new one.
    package static func shutdownShared() async {
        let client = processClient.withLock { client -> TallyfyClient? in
            defer { client = nil }
            return client
        }
        await client?.shutdown()
    }
}

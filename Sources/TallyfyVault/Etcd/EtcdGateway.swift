import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization
import TallyfyVaultCore

/// One cluster's JSON gateway: tries the members in turn, starting with the
/// last one that answered, and turns etcd's answers into `VaultError`s.
final class EtcdGateway: Sendable {
    let location: EtcdLocation
    let http: HTTPClient
    /// The member that last answered, per cluster, for the whole process:
    /// every operation of a command or an agent makes a gateway of its own,
    /// and each used to start again at the first member. Found by
    /// tools/partition-test: with the first member cut off, every write of
    /// an agent first waited 3 s for it (a lease, then the lock), and a
    /// renewal due 3 s before a short-lived token's end came too late.
    private static let lastAnswered = Mutex<[String: Int]>([:])
    private var preferredKey: String { location.endpoints.joined(separator: ",") }
    private var preferred: Int {
        get { Self.lastAnswered.withLock { $0[preferredKey] ?? 0 } }
        set { Self.lastAnswered.withLock { $0[preferredKey] = newValue } }
    }
    private let token: Mutex<String?>
    /// Carries a request to a member, when not `http` (the fuzz target).
    private let transport: EtcdTransport?
    /// Waits between rounds over the members (`Task.sleep`; nothing in the fuzz target).
    private let pause: @Sendable (Duration) async throws -> Void

    /// A request that a member has not answered in this time is sent to the next.
    static let deadline = TimeAmount.seconds(3)
    /// The largest answer read from etcd: a chunk (768 KiB, 1 MiB in base64)
    /// and its JSON fit well; anything bigger is refused as it arrives,
    /// never held in memory whole.
    static let maxAnswerBytes = 2 << 20

    init(location: EtcdLocation, transport: EtcdTransport? = nil,
        pause: @escaping @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) }) throws
    {
        self.location = location
        http = try Self.client(for: location)
        token = Mutex(nil)
        self.transport = transport
        self.pause = pause
    }

    /// The gateways of this process, one per vault (members, prefix, user
    /// and password file, TLS files; the prefix too, as errors name it):
    /// every read, lock and write of a command, and every renewal and watch
    /// of an agent running for weeks, go through one, so with etcd
    /// authentication the process logs in once (again only when etcd says
    /// its token expired) instead of once per operation.
    private static let gateways = Mutex<[String: EtcdGateway]>([:])

    static func shared(for location: EtcdLocation) throws -> EtcdGateway {
        let key = (location.endpoints + [location.prefix, location.user ?? "", location.passwordFile ?? "", location.tls ? "tls" : "plain",
            location.caFile ?? "", location.certFile ?? "", location.keyFile ?? ""]).joined(separator: "\u{0}")
        if let existing = gateways.withLock({ $0[key] }) { return existing }
        let made = try EtcdGateway(location: location)
        return gateways.withLock { gateways in
            if let existing = gateways[key] { return existing }
            gateways[key] = made
            return made
        }
    }

    var scheme: String { location.tls ? "https" : "http" }

    /// Sends and forgets (lease keep-alives and revokes).
    func send(_ path: String, _ body: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: body) else { return }
        let endpoint = location.endpoints[preferred % location.endpoints.count]
        if let transport { _ = try? transport(endpoint, path, data); return }
        guard let request = try? request(path, data, endpoint: endpoint) else { return }
        Self.unanswered(http.execute(request: request, deadline: .now() + Self.deadline))
    }

    /// Sends and forgets, to every member at once (the lock's keep-alives).
    func sendToEveryMember(_ path: String, _ body: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: body) else { return }
        for endpoint in location.endpoints {
            if let transport { _ = try? transport(endpoint, path, data); continue }
            guard let request = try? request(path, data, endpoint: endpoint) else { continue }
            Self.unanswered(http.execute(request: request, deadline: .now() + Self.deadline))
        }
    }

    /// Requests sent and not awaited, until they end (each within `deadline`):
    /// `shutDownAll` lets them end first. Found by a clone-check:
    /// AsyncHTTPClient trapped ("A connection that we don't know was
    /// released") when the CLI shut its client down under a lease revoke
    /// still in flight, and `login` ended with status 4 after sealing its
    /// token. (Shutting down cancels a lent connection; the request then
    /// completing gives back a connection the pool has already dropped.)
    private static let inFlight = Mutex<[UInt64: EventLoopFuture<HTTPClient.Response>]>([:])
    private static let nextRequest = Mutex<UInt64>(0)

    private static func unanswered(_ future: EventLoopFuture<HTTPClient.Response>) {
        let id = nextRequest.withLock { next in
            defer { next += 1 }
            return next
        }
        inFlight.withLock { $0[id] = future }
        future.whenComplete { _ in _ = inFlight.withLock { $0.removeValue(forKey: id) } }
    }

    private func request(_ path: String, _ body: Data, endpoint: String) throws -> HTTPClient.Request {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        // etcd 3.4's gateway wants the bare token, no "Bearer ".
        if let token = token.withLock({ $0 }) { headers.add(name: "Authorization", value: token) }
        return try HTTPClient.Request(url: "\(scheme)://\(endpoint)\(path)", method: .POST, headers: headers, body: .data(body))
    }

    /// One request to the first member that serves it; with `patience`,
    /// tried again for up to that long while members answer but cannot serve
    /// (no leader: one was killed, an election is under way, 1–3 s measured).
    /// Patience only for requests that are safe to repeat; a cluster whose
    /// every member refuses connections fails at once.
    func call(_ path: String, _ body: [String: Any], patience: Duration = .zero) async throws -> [String: Any] {
        let clock = ContinuousClock()
        let deadline = clock.now + patience
        var pause = Duration.milliseconds(50)
        while true {
            do {
                return try await callOnce(path, body)
            } catch let problem as NoServingMember where problem.reachable && clock.now + pause < deadline {
                try await self.pause(pause)  // between rounds over the members, while a leader is elected
                pause = min(pause * 2, .milliseconds(500))
            } catch let problem as NoServingMember {
                throw problem.error
            }
        }
    }

    private func callOnce(_ path: String, _ body: [String: Any]) async throws -> [String: Any] {
        if location.user != nil, token.withLock({ $0 }) == nil { try await authenticate() }
        do {
            return try await attempt(path, body)
        } catch let error as GatewayRefusal where error.code == 16 && location.user != nil {
            try await authenticate()  // the token expired (etcd's --auth-token-ttl)
            return try await attempt(path, body)
        } catch let error as GatewayRefusal {
            throw error.vaultError(location)
        }
    }

    /// The `Authorization` header's value for a request made outside
    /// `call` (a watch): etcd's token for the configured user, or `nil`.
    func authorization() async throws -> String? {
        guard location.user != nil else { return nil }
        if let token = token.withLock({ $0 }) { return token }
        do {
            try await authenticate()
        } catch let problem as NoServingMember {
            throw problem.error
        }
        return token.withLock { $0 }
    }

    /// Forgets etcd's token, so the next request authenticates again (a watch refused with 401).
    func forgetToken() { token.withLock { $0 = nil } }

    private func authenticate() async throws {
        guard let user = location.user, let file = location.passwordFile else { return }
        var info = stat()
        if stat(file, &info) == 0, info.st_mode & 0o077 != 0 {
            throw VaultError(.refused, "TALLYFY_VAULT_ETCD_PASSWORD_FILE \(file) can be read by other users (mode \(String(info.st_mode & 0o777, radix: 8)))",
                hint: "run `chmod 600 \(file)`")
        }
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw VaultError(.configuration, "could not read TALLYFY_VAULT_ETCD_PASSWORD_FILE \(file)",
                hint: "put the etcd user's password in that file, readable only by you")
        }
        var password = text
        while password.hasSuffix("\n") || password.hasSuffix("\r") { password.removeLast() }
        token.withLock { $0 = nil }
        do {
            let answer = try await attempt("/v3/auth/authenticate", ["name": user, "password": password])
            guard let value = answer["token"] as? String else {
                throw VaultError(.refused, "etcd at \(location.text) gave no token to user \(user)",
                    hint: "check that authentication is enabled on the cluster (`etcdctl auth enable`)", cause: .etcdRefusedAccess)
            }
            token.withLock { $0 = value }
        } catch let error as GatewayRefusal {
            throw VaultError(.refused, "etcd at \(location.text) refused user \(user): \(error.message)",
                hint: "check TALLYFY_VAULT_ETCD_USER and the password in TALLYFY_VAULT_ETCD_PASSWORD_FILE", cause: .etcdRefusedAccess)
        }
    }

    /// One request, to each member in turn until one answers.
    private func attempt(_ path: String, _ body: [String: Any]) async throws -> [String: Any] {
        let data = try JSONSerialization.data(withJSONObject: body)
        let count = location.endpoints.count
        let start = preferred
        var lastProblem = "no member answered"
        var tlsProblem: String?
        var reachable = false  // some member answered or took the request, and could not serve it
        for step in 0..<count {
            let index = (start + step) % count
            let endpoint = location.endpoints[index]
            let status: UInt
            let buffer: Data
            do {
                if let transport {
                    (status, buffer) = try transport(endpoint, path, data)
                } else {
                    let request = try request(path, data, endpoint: endpoint)
                    let response = try await http.execute(request: request,
                        delegate: ResponseAccumulator(request: request, maxBodySize: Self.maxAnswerBytes),
                        deadline: .now() + Self.deadline).futureResult.get()
                    status = response.status.code
                    buffer = response.body.map { Data($0.readableBytesView) } ?? Data()
                }
            } catch {
                // Matched by type, never by text. A server that rejects the
                // client certificate closes the connection during the
                // handshake: over TLS, a closed connection (not a refused
                // one) is taken as a TLS refusal.
                if error is NIOSSLError || error is NIOSSLExtraError || error is BoringSSLError
                    || (location.tls && (error as? HTTPClientError) == .remoteConnectionClosed)
                {
                    tlsProblem = String(describing: error)
                }
                lastProblem = "\(endpoint): \(Self.describe(error))"
                if !lastProblem.hasSuffix("connection refused") { reachable = true }
                continue
            }
            let json = (try? JSONSerialization.jsonObject(with: buffer)) as? [String: Any] ?? [:]
            if status == 200 && TestHooks.loseAnswer(path, data) {
                lastProblem = "\(endpoint): the answer was lost (test hook)"
                reachable = true
                continue
            }
            if status == 200 {
                preferred = index
                return json
            }
            let code = (json["code"] as? Int) ?? 0
            let message = ((json["message"] ?? json["error"]) as? String) ?? "HTTP \(status)"
            // 14 unavailable (no leader, leader changed), 4 deadline: another member may do.
            if status == 503 || code == 14 || code == 4 || message.contains("leader changed")
                || message.contains("timed out")
            {
                lastProblem = "\(endpoint): \(Self.clean(message))"
                reachable = true
                continue
            }
            throw GatewayRefusal(status: status, code: code, message: Self.clean(message))
        }
        if tlsProblem != nil {
            throw VaultError(.refused, "etcd at \(location.text) refused the TLS connection or this machine's certificate (\(lastProblem))",
                hint: "check TALLYFY_VAULT_ETCD_CACERT, TALLYFY_VAULT_ETCD_CERT and TALLYFY_VAULT_ETCD_KEY against the cluster's certificates",
                cause: .etcdRefusedTLS)
        }
        throw NoServingMember(reachable: reachable, error: VaultError(.unavailable, "etcd at \(location.text) is unreachable (\(lastProblem))",
            hint: "check that the cluster is running and reachable: `etcdctl --endpoints \(location.endpoints.joined(separator: ",")) endpoint health`"))
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .deadlineExceeded, .readTimeout, .connectTimeout: return "no answer within \(deadline.nanoseconds / 1_000_000_000) s"
            case .remoteConnectionClosed: return "connection closed"
            default: break
            }
        }
        if error is ResponseAccumulator.ResponseTooBigError { return "an answer over \(maxAnswerBytes >> 20) MiB" }
        let text = String(describing: error)
        if text.contains("refused") { return "connection refused" }
        return clean(text)
    }

    /// One line, bounded: etcd's messages name keys and states, never values.
    static func clean(_ text: String) -> String {
        String(text.split(whereSeparator: \.isNewline).first ?? "").prefix(200).description
    }

    /// One client per TLS setting for the life of the process, shut down at
    /// its end (`shutDownAll`).
    private static let clients = Mutex<[String: HTTPClient]>([:])

    /// Shuts down this process's etcd clients, with the gateways that use
    /// them: the CLI's last step, the agent's once stopped. A later
    /// operation makes new ones.
    static func shutDownAll() async {
        let made = clients.withLock { clients in
            defer { clients = [:] }
            return Array(clients.values)
        }
        gateways.withLock { $0 = [:] }
        guard !made.isEmpty else { return }  // no etcd vault used: nothing to wait for
        for request in inFlight.withLock({ Array($0.values) }) { _ = try? await request.get() }
        // An answered request gives its connection back to the pool on its
        // event loop just after its answer: a task queued on every loop now
        // runs after that, so no connection is still lent out below.
        for loop in HTTPClient.defaultEventLoopGroup.makeIterator() { try? await loop.submit {}.get() }
        for client in made { try? await client.shutdown() }
    }

    /// `streaming`: for watches, whose answer is a stream that may be quiet
    /// for hours, so it has no read timeout.
    static func client(for location: EtcdLocation, streaming: Bool = false) throws -> HTTPClient {
        let name = (streaming ? "watch\u{0}" : "")
            + (location.tls ? [location.caFile, location.certFile, location.keyFile].map { $0 ?? "" }.joined(separator: "\u{0}") : "plain")
        if let existing = clients.withLock({ $0[name] }) { return existing }
        // A member that is down refuses the connection: go to the next one at
        // once, rather than AHC's default of retrying until the deadline.
        var configuration = HTTPClient.Configuration.http1Only()
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout = HTTPClient.Configuration.Timeout(connect: .seconds(1), read: streaming ? nil : deadline)
        guard location.tls else { return remember(HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration), as: name) }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca = location.caFile {
            guard FileManager.default.isReadableFile(atPath: ca) else {
                throw VaultError(.configuration, "cannot read TALLYFY_VAULT_ETCD_CACERT \(ca)", hint: "name the PEM file of the cluster's CA")
            }
            tls.trustRoots = .file(ca)
        }
        if let cert = location.certFile, let key = location.keyFile {
            do {
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            } catch {
                throw VaultError(.configuration, "cannot read the etcd client certificate \(cert) or its key \(key)",
                    hint: "TALLYFY_VAULT_ETCD_CERT and TALLYFY_VAULT_ETCD_KEY name PEM files")
            }
        }
        configuration.tlsConfiguration = tls
        return remember(HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration), as: name)
    }

    /// Keeps the first client made under `name` (two threads may race to make one).
    private static func remember(_ client: HTTPClient, as name: String) -> HTTPClient {
        let kept = clients.withLock { clients in
            if let existing = clients[name] { return existing }
            clients[name] = client
            return client
        }
        // The one not kept never made a request: shut down in the background,
        // since this may be called from async code, where `syncShutdown` must not be.
        if kept !== client { Task { try? await client.shutdown() } }
        return kept
    }
}

/// Sends one request body to `path` at a member (`host:port`) and returns the
/// answer's HTTP status and body; throws when no answer came.
typealias EtcdTransport = @Sendable (_ endpoint: String, _ path: String, _ body: Data) throws -> (status: UInt, body: Data)

/// No member could serve a request; `reachable` when one at least answered
/// (an election is under way) rather than every one refusing connections.
struct NoServingMember: Error {
    let reachable: Bool
    let error: VaultError
}

/// etcd answered, and said no (not a member being unavailable).
struct GatewayRefusal: Error {
    let status: UInt
    let code: Int
    let message: String

    func vaultError(_ location: EtcdLocation) -> VaultError {
        switch code {
        case 7, 16:
            let who = location.user.map { "user \($0)" } ?? "an unauthenticated client"
            return VaultError(.refused, "etcd at \(location.text) refused \(who) access to \(location.prefix): \(message)",
                hint: "grant the user's role readwrite on the prefix (`etcdctl role grant-permission ROLE --prefix readwrite \(location.prefix)/`)",
                cause: .etcdRefusedAccess)
        default:
            if message.contains("request is too large") {
                return VaultError(.io, "etcd at \(location.text) refused a request as too large: \(message)",
                    hint: "raise the cluster's --max-request-bytes")
            }
            return VaultError(.unavailable, "etcd at \(location.text) answered \(status): \(message)")
        }
    }
}

func b64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

func unb64(_ value: Any?) -> Data { (value as? String).flatMap { Data(base64Encoded: $0) } ?? Data() }

func int64(_ value: Any?) -> Int64 {
    if let text = value as? String { return Int64(text) ?? 0 }
    return (value as? NSNumber)?.int64Value ?? 0
}

import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import TallyfyVaultCore

/// The loopback credential proxy behind `exec --proxy` and `tallyfy-vault proxy`:
/// a child holds a capability and this address; the proxy holds the token.
///
/// It listens on 127.0.0.1 only, on a free port. Each request is checked
/// before anything leaves the machine (`ProxyHeaders`: the capability,
/// compared in constant time, and smuggling headers; `ProxyPolicy`: the path
/// and the `--allow` rules) and, when refused, answered here in Tallyfy's
/// error shape. The rest goes to the profile's API host with the real token,
/// over the same TLS verification as every other call of the tool (the
/// system's trust store, no redirects followed), on kept-alive connections.
/// Bodies stream both ways with backpressure: a request body is pulled from
/// the child's connection as Tallyfy takes it, an answer written to the
/// child as it comes; neither is held whole, except a request body of at
/// most `replayableBodyLimit` bytes, kept so that it can be sent again after
/// a 401 (`ProxyTokenKeeper`).
///
/// Bad HTTP from the child (`ProxyConnectionGuard`) and an upstream that
/// hangs or answers garbage (502 / 504 within the tool's HTTP deadline)
/// end at most that one connection.
package final class CredentialProxy: Sendable {
    package struct Configuration: Sendable {
        /// The profile's API URL, e.g. `https://go.tallyfy.com/api`.
        package var apiURL: URL
        /// The token endpoint, refused even when it lies below the API URL.
        package var tokenURL: URL?
        package var rules: [ProxyAllowRule]
        /// How long Tallyfy has to answer (its head); also the longest pause
        /// while an answer streams. `TALLYFY_VAULT_HTTP_TIMEOUT` or 30 s.
        package var upstreamTimeout: Duration
        /// How long a child has from a request's first byte to its head.
        package var headTimeout: Duration
        /// How long a kept-alive connection may stay idle.
        package var idleTimeout: Duration = .seconds(120)

        package init(apiURL: URL, tokenURL: URL?, rules: [ProxyAllowRule], environment: [String: String]) {
            self.apiURL = apiURL
            self.tokenURL = tokenURL
            self.rules = rules
            let timeout = TallyfyClient.timeoutOverride(environment[TallyfyClient.timeoutEnvironmentVariable]) ?? .seconds(30)
            upstreamTimeout = timeout
            headTimeout = min(timeout, .seconds(10))
        }
    }

    /// A request body up to this size is read before it is sent, so it can be
    /// sent again after a 401; a longer one streams, and a 401 to it goes to
    /// the child as it came.
    package static let replayableBodyLimit = 256 * 1024
    /// The decoder's limits: beyond them, 431.
    static let headerLimits: NIOHTTPDecoderLimitConfiguration = {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = 16 * 1024
        limits.maxHeaderListSize = 32 * 1024
        limits.maxHeaderFieldCount = 128
        return limits
    }()

    package let configuration: Configuration
    package let capability: ProxyCapability
    package let counters: ProxyCounters
    package let keeper: ProxyTokenKeeper
    /// The port it listens on, on 127.0.0.1.
    package let port: Int
    private let policy: ProxyPolicy
    private let http: HTTPClient
    private let server: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
    private let upstreamBase: String
    private let ownHosts: Set<String>

    /// `http://127.0.0.1:PORT` plus the API URL's path: what the child gets
    /// as `TALLYFY_API_URL`.
    package var url: String {
        let path = configuration.apiURL.path
        return "http://127.0.0.1:\(port)" + (path == "/" ? "" : path.hasSuffix("/") ? String(path.dropLast()) : path)
    }

    /// Binds 127.0.0.1 on a free port; call `serve()` to accept connections.
    package static func start(
        configuration: Configuration, keeper: ProxyTokenKeeper, counters: ProxyCounters, capability: ProxyCapability = ProxyCapability()
    ) async throws -> CredentialProxy {
        let timeouts = ProxyConnectionGuard.Timeouts(
            head: Self.amount(configuration.headTimeout), body: Self.amount(configuration.upstreamTimeout),
            idle: Self.amount(configuration.idleTimeout))
        let server: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 512)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .bind(host: "127.0.0.1", port: 0) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let guardHandler = ProxyConnectionGuard(timeouts: timeouts, counters: counters)
                        let sync = channel.pipeline.syncOperations
                        try sync.addHandler(ByteWatcher(guardHandler))
                        try sync.configureHTTPServerPipeline(
                            withErrorHandling: false, withEncoderConfiguration: .init(), withDecoderLimitConfiguration: Self.headerLimits)
                        try sync.addHandler(guardHandler)
                        return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw VaultError(.io, "the proxy could not listen on 127.0.0.1: \(error)")
        }
        guard let port = server.channel.localAddress?.port else {
            try? await server.channel.close()
            throw VaultError(.io, "the proxy could not tell which port it listens on")
        }
        return CredentialProxy(configuration: configuration, keeper: keeper, counters: counters, capability: capability, server: server, port: port)
    }

    private init(
        configuration: Configuration, keeper: ProxyTokenKeeper, counters: ProxyCounters, capability: ProxyCapability,
        server: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>, port: Int
    ) {
        self.configuration = configuration
        self.keeper = keeper
        self.counters = counters
        self.capability = capability
        self.server = server
        self.port = port
        policy = ProxyPolicy(apiURL: configuration.apiURL, tokenURL: configuration.tokenURL, rules: configuration.rules)
        ownHosts = ["127.0.0.1:\(port)", "localhost:\(port)"]
        let api = configuration.apiURL
        var host = api.host ?? "localhost"
        if host.contains(":"), !host.hasPrefix("[") { host = "[\(host)]" }
        upstreamBase = "\(api.scheme?.lowercased() ?? "https")://\(host)" + (api.port.map { ":\($0)" } ?? "")

        // As `TallyfyClient`: the system's trust store, no redirect ever
        // followed (it would carry the token elsewhere), no decompression (the
        // child gets the bytes Tallyfy sent), our own timeouts.
        var http = HTTPClient.Configuration()
        http.timeout = .init(connect: Self.amount(min(.seconds(5), configuration.upstreamTimeout)), read: Self.amount(configuration.upstreamTimeout))
        http.redirectConfiguration = .disallow
        http.connectionPool.retryConnectionEstablishment = false
        http.decompression = .disabled
        http.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 32
        self.http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: http)
    }

    static func amount(_ duration: Duration) -> TimeAmount { TallyfyClient.timeAmount(duration) }

    /// Accepts and serves connections until `stop()`.
    package func serve() async {
        try? await server.executeThenClose { inbound in
            try await withThrowingDiscardingTaskGroup { group in
                for try await connection in inbound {
                    group.addTask { await self.serve(connection) }
                }
            }
        }
    }

    /// Closes the port at once (connections in flight are cut), stops the
    /// renewals and the upstream client.
    package func stop() async {
        try? await server.channel.close()
        await keeper.stop()
        try? await http.shutdown()
    }

    // MARK: - One connection

    /// The connection's request parts, pulled by one task at a time: the
    /// request loop, or the upstream client while it sends a streamed body.
    private final class Parts: @unchecked Sendable {
        var iterator: NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator
        /// The body being read has reached its `.end`.
        var bodyDone = true

        init(_ iterator: NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator) { self.iterator = iterator }

        func next() async throws -> HTTPServerRequestPart? { try await iterator.next() }

        /// The next body chunk, `nil` at the end of the body.
        func nextChunk() async throws -> ByteBuffer? {
            guard !bodyDone else { return nil }
            switch try await iterator.next() {
            case .body(let buffer): return buffer
            case .end:
                bodyDone = true
                return nil
            case nil: throw ChannelError.eof  // cut off: never a truncated body passed on as whole
            case .head: throw ChannelError.inappropriateOperationForState
            }
        }
    }

    /// The request body as the upstream client pulls it.
    private struct StreamedBody: AsyncSequence, Sendable {
        typealias Element = ByteBuffer
        let parts: Parts
        struct AsyncIterator: AsyncIteratorProtocol {
            let parts: Parts
            mutating func next() async throws -> ByteBuffer? { try await parts.nextChunk() }
        }
        func makeAsyncIterator() -> AsyncIterator { AsyncIterator(parts: parts) }
    }

    private typealias Outbound = NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>

    private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
        try? await connection.executeThenClose { inbound, outbound in
            let parts = Parts(inbound.makeAsyncIterator())
            while let part = try await parts.next() {
                guard case .head(let head) = part else { continue }
                counters.count { $0.requests += 1 }
                let hasBody = head.headers.first(name: "content-length").map { $0 != "0" } ?? false
                    || head.headers.contains(name: "transfer-encoding")
                parts.bodyDone = false
                let keepGoing: Bool
                switch decide(head) {
                case .failure(let refusal):
                    counters.count { $0.refusals += 1 }
                    // A small body is read and dropped, so the connection stays
                    // usable; a large one is not read at all: close instead.
                    let length = head.headers.first(name: "content-length").flatMap(Int.init)
                    let close = !head.isKeepAlive || (hasBody && (length ?? Int.max) > Self.replayableBodyLimit)
                    if !close { while try await parts.nextChunk() != nil {} }
                    try await answer(refusal, on: outbound, close: close, version: head.version)
                    keepGoing = !close
                case .success(let (target, headers)):
                    keepGoing = try await forward(head, target: target, headers: headers, hasBody: hasBody, parts: parts, outbound: outbound)
                }
                guard keepGoing, head.isKeepAlive, parts.bodyDone else { return }
            }
        }
    }

    private func decide(_ head: HTTPRequestHead) -> Result<(String, HTTPHeaders), ProxyRefusal> {
        policy.check(method: head.method.rawValue, target: head.uri).flatMap { target in
            ProxyHeaders.upstream(head.headers, capability: capability, ownHosts: ownHosts, requireHost: head.version != .http1_0 && head.version != .http0_9)
                .map { (target, $0) }
        }
    }

    /// Sends one request upstream (again, with a renewed token, after a 401
    /// when its body was kept) and streams the answer to the child. Returns
    /// whether the connection may serve another request.
    private func forward(
        _ head: HTTPRequestHead, target: String, headers: HTTPHeaders, hasBody: Bool, parts: Parts, outbound: Outbound
    ) async throws -> Bool {
        var request = HTTPClientRequest(url: upstreamBase + target)
        request.method = head.method
        request.headers = headers
        var replayable = true
        if hasBody {
            let length = head.headers.first(name: "content-length").flatMap(Int64.init)
            if let length, length <= Self.replayableBodyLimit {
                var body = ByteBuffer()
                while var chunk = try await parts.nextChunk() { body.writeBuffer(&chunk) }
                request.body = .bytes(body)
            } else {
                replayable = false
                request.body = .stream(StreamedBody(parts: parts), length: length.map { .known($0) } ?? .unknown)
            }
        } else {
            while try await parts.nextChunk() != nil {}
        }

        var grant = await keeper.current
        var response: HTTPClientResponse
        do {
            response = try await send(request, token: grant.token)
            // Twice at most: the first renewal may take a token another
            // process sealed, which a Tallyfy that revokes on reissue may
            // have revoked already; the second then asks Tallyfy.
            var round = 0
            while response.status == .unauthorized && replayable && round < 2 {
                round += 1
                // Read the 401 (small) before deciding: it is the answer if no renewal helps.
                let refusedBody = try? await response.body.collect(upTo: 1 << 20)
                guard let renewed = await keeper.renewed(after: grant.token) else {
                    try await answer(response, body: refusedBody ?? ByteBuffer(), on: outbound, version: head.version)
                    return true
                }
                grant = renewed
                counters.count { $0.retries += 1 }
                response = try await send(request, token: grant.token)
            }
            if response.status == .unauthorized && round > 0 { await keeper.refusedOnRetry(grant.token) }
        } catch {
            counters.count { $0.upstreamFailures += 1 }
            try await answer(Self.refusal(for: error), on: outbound, close: !parts.bodyDone, version: head.version)
            return parts.bodyDone
        }
        if response.status != .unauthorized { await keeper.accepted(grant.token) }
        try await answer(response, body: nil, on: outbound, version: head.version)
        return true
    }

    private func send(_ request: HTTPClientRequest, token: String) async throws -> HTTPClientResponse {
        var request = request
        request.headers.replaceOrAdd(name: "Authorization", value: "Bearer \(token)")
        return try await http.execute(request, deadline: .now() + Self.amount(configuration.upstreamTimeout))
    }

    /// Streams an upstream answer to the child: the head at once, then each
    /// chunk as it comes, written with backpressure.
    private func answer(_ response: HTTPClientResponse, body: ByteBuffer?, on outbound: Outbound, version: HTTPVersion) async throws {
        var headers = ProxyHeaders.downstream(response.headers)
        if let body {
            headers.remove(name: "content-length")
            headers.add(name: "Content-Length", value: String(body.readableBytes))
        }
        try await outbound.write(.head(HTTPResponseHead(version: version, status: response.status, headers: headers)))
        if let body {
            if body.readableBytes > 0 { try await outbound.write(.body(.byteBuffer(body))) }
        } else {
            for try await chunk in response.body { try await outbound.write(.body(.byteBuffer(chunk))) }
        }
        try await outbound.write(.end(nil))
    }

    private func answer(_ refusal: ProxyRefusal, on outbound: Outbound, close: Bool, version: HTTPVersion) async throws {
        let body = ByteBuffer(string: refusal.body)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        if refusal.status == 401 { headers.add(name: "WWW-Authenticate", value: "Bearer realm=\"tallyfy-vault proxy\"") }
        if close { headers.add(name: "Connection", value: "close") }
        try await outbound.write(.head(HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: refusal.status), headers: headers)))
        try await outbound.write(.body(.byteBuffer(body)))
        try await outbound.write(.end(nil))
    }

    /// 504 when Tallyfy took too long, 502 for everything else it did wrong.
    static func refusal(for error: Error) -> ProxyRefusal {
        if let error = error as? HTTPClientError,
            [HTTPClientError.deadlineExceeded, .readTimeout, .connectTimeout].contains(error)
        {
            return .gatewayTimeout
        }
        return .badGateway
    }
}

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
/// It listens on 127.0.0.1 only, on a free port, and, for a standing proxy,
/// also on a Unix socket (`Configuration.unixSocketPath`) through the same
/// pipeline: a connection there is accepted only from a process of the
/// proxy's own uid (`SO_PEERCRED`, checked before a byte is read; another
/// uid's is closed and counted), and needs no capability. Each request is checked
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
        /// Also listen here, for this uid only, without the capability. Its
        /// folder must be private (`RuntimeFolder`); a stale socket file of
        /// ours there is replaced, anything else refused.
        package var unixSocketPath: String?
        /// Hears of each connection to the Unix socket refused for its uid
        /// (uid, pid), for the proxy's log.
        package var refusedPeer: (@Sendable (UInt32, Int32) -> Void)?

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
    private let servers: [(ProxyListener, Server)]
    private let socketFile: ProxySocketFile?
    private let upstreamBase: String
    private let ownHosts: Set<String>

    /// `http://127.0.0.1:PORT` plus the API URL's path: what the child gets
    /// as `TALLYFY_API_URL`.
    package var url: String {
        let path = configuration.apiURL.path
        return "http://127.0.0.1:\(port)" + (path == "/" ? "" : path.hasSuffix("/") ? String(path.dropLast()) : path)
    }

    /// Binds 127.0.0.1 on a free port (and the Unix socket, when configured);
    /// call `serve()` to accept connections.
    package static func start(
        configuration: Configuration, keeper: ProxyTokenKeeper, counters: ProxyCounters, capability: ProxyCapability = ProxyCapability()
    ) async throws -> CredentialProxy {
        let tcp: Server
        do {
            tcp = try await bootstrap().bind(host: "127.0.0.1", port: 0) { channel in
                accept(channel, over: .tcp, configuration: configuration, counters: counters)
            }
        } catch {
            throw VaultError(.io, "the proxy could not listen on 127.0.0.1: \(error)")
        }
        guard let port = tcp.channel.localAddress?.port else {
            try? await tcp.channel.close()
            throw VaultError(.io, "the proxy could not tell which port it listens on")
        }
        var servers: [(ProxyListener, Server)] = [(.tcp, tcp)]
        var socketFile: ProxySocketFile?
        if let path = configuration.unixSocketPath {
            do {
                let file = try ProxySocketFile.prepare(path)
                // Nothing but us may connect even for a moment: bound under
                // umask 177 (as ssh-agent's), so the file is 0600.
                let previous = umask(0o177)
                defer { umask(previous) }
                let unix = try await bootstrap().bind(unixDomainSocketPath: path) { channel in
                    accept(channel, over: .unix, configuration: configuration, counters: counters)
                }
                servers.append((.unix, unix))
                socketFile = file.bound()
            } catch {
                try? await tcp.channel.close()
                if let error = error as? VaultError { throw error }
                throw VaultError(.io, "the proxy could not listen on \(path): \(error)",
                    hint: "set XDG_RUNTIME_DIR to a short private folder")
            }
        }
        return CredentialProxy(
            configuration: configuration, keeper: keeper, counters: counters, capability: capability, servers: servers,
            socketFile: socketFile, port: port)
    }

    private typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
    private typealias Server = NIOAsyncChannel<Accepted, Never>

    /// What an accepted connection became: one to serve, or one from
    /// another uid, closed already.
    private enum Accepted: Sendable {
        case serve(Connection, over: ProxyListener)
        case refused
    }

    /// The one bootstrap both listeners bind (TCP options are ignored on the
    /// Unix socket).
    private static func bootstrap() -> ServerBootstrap {
        ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 512)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    }

    /// The pipeline of every connection, on either listener; on the Unix
    /// socket, after the peer's uid was found to be ours.
    private static func accept(
        _ channel: Channel, over listener: ProxyListener, configuration: Configuration, counters: ProxyCounters
    ) -> EventLoopFuture<Accepted> {
        let timeouts = ProxyConnectionGuard.Timeouts(
            head: Self.amount(configuration.headTimeout), body: Self.amount(configuration.upstreamTimeout),
            idle: Self.amount(configuration.idleTimeout))
        let peer: EventLoopFuture<PeerCredentials?> =
            listener == .unix ? PeerCredentials.of(channel) : channel.eventLoop.makeSucceededFuture(nil)
        return peer.flatMapThrowing { credentials in
            if listener == .unix {
                // Not ours (or not known): closed before a byte is read. Not
                // a failed future: that would end the listener's accept loop.
                guard let credentials, credentials.uid == geteuid() else {
                    counters.countOtherUser()
                    configuration.refusedPeer?(credentials?.uid ?? UInt32.max, credentials?.pid ?? 0)
                    channel.close(promise: nil)
                    return .refused
                }
            }
            let guardHandler = ProxyConnectionGuard(timeouts: timeouts, counters: counters, listener: listener)
            let sync = channel.pipeline.syncOperations
            try sync.addHandler(ByteWatcher(guardHandler))
            try sync.configureHTTPServerPipeline(
                withErrorHandling: false, withEncoderConfiguration: .init(), withDecoderLimitConfiguration: Self.headerLimits)
            try sync.addHandler(guardHandler)
            return .serve(try Connection(wrappingChannelSynchronously: channel), over: listener)
        }
    }

    private init(
        configuration: Configuration, keeper: ProxyTokenKeeper, counters: ProxyCounters, capability: ProxyCapability,
        servers: [(ProxyListener, Server)], socketFile: ProxySocketFile?, port: Int
    ) {
        self.configuration = configuration
        self.keeper = keeper
        self.counters = counters
        self.capability = capability
        self.servers = servers
        self.socketFile = socketFile
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
        var http = HTTPClient.Configuration.http1Only()
        http.timeout = .init(connect: Self.amount(min(.seconds(5), configuration.upstreamTimeout)), read: Self.amount(configuration.upstreamTimeout))
        http.redirectConfiguration = .disallow
        http.connectionPool.retryConnectionEstablishment = false
        http.decompression = .disabled
        http.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 32
        self.http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: http)
    }

    static func amount(_ duration: Duration) -> TimeAmount { TallyfyClient.timeAmount(duration) }

    /// The Unix socket's path, when it listens on one.
    package var unixSocketPath: String? { socketFile?.path }

    /// Accepts and serves connections on every listener until `stop()`.
    package func serve() async {
        await withDiscardingTaskGroup { listeners in
            for (_, server) in servers {
                listeners.addTask {
                    try? await server.executeThenClose { inbound in
                        try await withThrowingDiscardingTaskGroup { group in
                            for try await accepted in inbound {
                                guard case .serve(let connection, let listener) = accepted else { continue }
                                group.addTask { await self.serve(connection, over: listener) }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Closes the port and the Unix socket at once (connections in flight
    /// are cut) and removes the socket file, stops the renewals and the
    /// upstream client.
    package func stop() async {
        for (_, server) in servers { try? await server.channel.close() }
        socketFile?.remove()
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

    private func serve(_ connection: Connection, over listener: ProxyListener) async {
        try? await connection.executeThenClose { inbound, outbound in
            let parts = Parts(inbound.makeAsyncIterator())
            while let part = try await parts.next() {
                guard case .head(let head) = part else { continue }
                counters.count(over: listener, requests: 1)
                let hasBody = head.headers.first(name: "content-length").map { $0 != "0" } ?? false
                    || head.headers.contains(name: "transfer-encoding")
                parts.bodyDone = false
                let keepGoing: Bool
                switch decide(head, over: listener) {
                case .failure(let refusal):
                    counters.count(over: listener, refusals: 1)
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

    private func decide(_ head: HTTPRequestHead, over listener: ProxyListener) -> Result<(String, HTTPHeaders), ProxyRefusal> {
        policy.check(method: head.method.rawValue, target: head.uri).flatMap { target in
            ProxyHeaders.upstream(
                head.headers, capability: capability, ownHosts: listener == .tcp ? ownHosts : nil,
                requireHost: head.version != .http1_0 && head.version != .http0_9, capabilityRequired: listener == .tcp
            ).map { (target, $0) }
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

/// The peer of a Unix socket connection, as the kernel knows it
/// (`SO_PEERCRED`, Linux's `struct ucred`).
struct PeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0

    /// `nil` when the channel cannot say (then the peer is not trusted).
    static func of(_ channel: Channel) -> EventLoopFuture<PeerCredentials?> {
        guard let provider = channel as? SocketOptionProvider else { return channel.eventLoop.makeSucceededFuture(nil) }
        let credentials: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        return credentials.map { Optional($0) }.recover { _ in nil }
    }
}

/// The standing proxy's socket file: replaced only when it is a stale socket
/// of ours, and removed when the proxy stops only while it is still the
/// file this proxy bound (same device and inode), so a proxy never removes
/// another's.
struct ProxySocketFile: Sendable {
    let path: String
    private var identity: (dev_t, ino_t)?

    private init(path: String) { self.path = path }

    /// Checks `path` can be bound: its folder private and ours, no live
    /// listener behind an existing socket file (a stale one is removed).
    static func prepare(_ path: String) throws -> ProxySocketFile {
        let folder = (path as NSString).deletingLastPathComponent
        var info = stat()
        guard lstat(folder, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == geteuid(), info.st_mode & 0o077 == 0 else {
            throw VaultError(.refused, "the proxy's socket folder \(folder) is not a private folder of yours",
                hint: "remove it; tallyfy-vault makes it as a private folder")
        }
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK, info.st_uid == geteuid() else {
                throw VaultError(.usage, "\(path) exists and is not a proxy socket of yours; refusing to replace it", hint: "remove it")
            }
            if listening(path) {
                throw VaultError(.usage, "a proxy is already listening on \(path)", hint: "use it, or stop it with `tallyfy-vault proxy stop`")
            }
            unlink(path)  // stale: its proxy is gone
        }
        return ProxySocketFile(path: path)
    }

    /// Whether something accepts connections on the socket at `path`.
    private static func listening(_ path: String) -> Bool {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
    }

    /// Remembers which file was bound.
    func bound() -> ProxySocketFile {
        var file = self
        var info = stat()
        if lstat(path, &info) == 0 { file.identity = (info.st_dev, info.st_ino) }
        return file
    }

    func remove() {
        var info = stat()
        guard let identity, lstat(path, &info) == 0, info.st_dev == identity.0, info.st_ino == identity.1 else { return }
        unlink(path)
    }
}

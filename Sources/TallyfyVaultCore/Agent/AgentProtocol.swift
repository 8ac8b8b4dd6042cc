#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The agent's wire protocol, version 1 (docs/agent.md is its specification).
///
/// One request and one answer per connection over the agent's Unix socket,
/// each a frame: a 4-byte big-endian length, then that many bytes of UTF-8
/// JSON. Requests are at most 64 KiB and answers at most 1 MiB; anything
/// larger, shorter or slower than the deadline ends the connection.
package enum AgentProtocol {
    package static let version = 1
    package static let maxRequestLength = 64 * 1024
    package static let maxAnswerLength = 1 << 20
    /// How long either side waits for the other's bytes.
    package static let ioTimeout: TimeInterval = 5

    package enum Operation: String, Codable, Sendable {
        case token, status, lock, stop
    }

    package struct Request: Codable, Sendable, Equatable {
        package var version: Int
        package var op: Operation
        /// The vault's resolved path: an agent serves one vault only.
        package var vault: String?
        package var profile: String?
        package var user: String?
        package var minimumLifetime: Double?
        /// `whenStale`, `whenStaleStrictly` or `never` (see `TokenRequest.Renewal`).
        package var renewal: String?

        package init(op: Operation, vault: String? = nil, profile: String? = nil, user: String? = nil,
            minimumLifetime: Double? = nil, renewal: String? = nil)
        {
            version = AgentProtocol.version
            self.op = op
            self.vault = vault
            self.profile = profile
            self.user = user
            self.minimumLifetime = minimumLifetime
            self.renewal = renewal
        }
    }

    /// What the agent answers. `error` names why it could not serve:
    /// `locked` (no key held), `other-vault`, `bad-request`, or `failed`
    /// (serving failed; `message`, `hint` and `exitStatus` say how).
    package struct Answer: Codable, Sendable, Equatable {
        package var version: Int
        package var ok: Bool
        package var error: String?
        package var message: String?
        package var hint: String?
        package var exitStatus: Int32?
        package var grant: WireGrant?
        package var status: Status?

        package init(ok: Bool, error: String? = nil, message: String? = nil, hint: String? = nil, exitStatus: Int32? = nil,
            grant: WireGrant? = nil, status: Status? = nil)
        {
            version = AgentProtocol.version
            self.ok = ok
            self.error = error
            self.message = message
            self.hint = hint
            self.exitStatus = exitStatus
            self.grant = grant
            self.status = status
        }

        package static func failure(_ error: String, _ message: String) -> Answer {
            Answer(ok: false, error: error, message: message)
        }
    }

    /// A `TokenGrant` on the wire; the expiry in Unix seconds.
    package struct WireGrant: Codable, Sendable, Equatable {
        package var profile: String
        package var orgID: String
        package var apiURL: String
        package var token: String
        package var expiresAt: Double
        package var user: String?
        package var renewalFailure: String?

        package init(_ grant: TokenGrant) {
            profile = grant.profile
            orgID = grant.orgID
            apiURL = grant.apiURL
            token = grant.token
            expiresAt = grant.expiresAt.timeIntervalSince1970
            user = grant.user
            renewalFailure = grant.renewalFailure
        }

        /// Back to a grant; `nil` when the expiry is not a sane date.
        package var grant: TokenGrant? {
            guard expiresAt.isFinite, abs(expiresAt) < 1e11 else { return nil }
            var grant = TokenGrant(profile: profile, orgID: orgID, apiURL: apiURL, token: token,
                expiresAt: Date(timeIntervalSince1970: expiresAt), user: user)
            grant.renewalFailure = renewalFailure
            return grant
        }
    }

    package struct Status: Codable, Sendable, Equatable {
        package var vault: String
        package var locked: Bool
        package var pid: Int32
        package var startedAt: Double
        package var idleTimeout: Double?
        package var maxLifetime: Double?
        package var served: Int
        package var renewals: Int

        package init(vault: String, locked: Bool, pid: Int32, startedAt: Double, idleTimeout: Double?, maxLifetime: Double?,
            served: Int, renewals: Int)
        {
            self.vault = vault
            self.locked = locked
            self.pid = pid
            self.startedAt = startedAt
            self.idleTimeout = idleTimeout
            self.maxLifetime = maxLifetime
            self.served = served
            self.renewals = renewals
        }
    }

    // MARK: - Frames

    /// Writes one frame: length, then `value` as JSON.
    package static func send(_ value: some Encodable, to descriptor: Int32) throws {
        try sendFrame(Array(try JSONEncoder().encode(value)), to: descriptor)
    }

    /// Writes one frame: the length of `body`, then `body`.
    static func sendFrame(_ body: [UInt8], to descriptor: Int32) throws {
        let length = UInt32(body.count)
        var frame = [UInt8(length >> 24), UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff)]
        frame.append(contentsOf: body)
        var sent = 0
        while sent < frame.count {
            // MSG_NOSIGNAL: a peer that hung up is an EPIPE here, never a SIGPIPE that ends the process.
            let n = frame.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress! + sent, frame.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw AgentError.connection(errno == EPIPE || errno == ECONNRESET
                    ? "the other end hung up" : "could not write to the agent socket")
            }
            sent += n
        }
    }

    /// Reads one request frame and decodes it: the request, or why it is a
    /// bad request (`bad-request`: an unknown `op`, another version, JSON
    /// that is not a request). Throws only when no whole frame arrived.
    package static func decodeRequest(_ body: [UInt8]) -> Result<Request, BadRequest> {
        if let request = try? JSONDecoder().decode(Request.self, from: Data(body)) {
            guard request.version == version else {
                return .failure(BadRequest(message: "this agent speaks protocol version \(version)"))
            }
            return .success(request)
        }
        // Say which part is wrong, without echoing what the client sent.
        struct Probe: Decodable {
            var version: Int?
            var op: String?
        }
        guard let probe = try? JSONDecoder().decode(Probe.self, from: Data(body)) else {
            return .failure(BadRequest(message: "the request is not the JSON object docs/agent.md describes"))
        }
        if probe.version != version {
            return .failure(BadRequest(message: "this agent speaks protocol version \(version)"))
        }
        if let op = probe.op, Operation(rawValue: op) == nil {
            let known = [Operation.token, .status, .lock, .stop].map(\.rawValue).joined(separator: ", ")
            return .failure(BadRequest(message: "unknown op; this agent answers \(known)"))
        }
        return .failure(BadRequest(message: "the request lacks a field or has one of the wrong type (docs/agent.md)"))
    }

    /// Why a whole frame is not a request the agent can serve.
    package struct BadRequest: Error, Sendable {
        package var message: String
    }

    /// Reads one frame against a deadline for the whole frame, never per
    /// byte: a client that trickles its request cannot hold the reader past
    /// the deadline. `read` may be called again with a later deadline to
    /// go on where it stopped.
    package struct FrameReader: Sendable {
        package let maxLength: Int
        private var header: [UInt8] = []
        private var body: [UInt8] = []
        private var length: Int?

        package init(maxLength: Int) {
            self.maxLength = maxLength
        }

        /// The frame's body; `nil` when the deadline passed first. Throws when
        /// the peer hung up, a read failed or the frame is over the limit.
        package mutating func read(from descriptor: Int32, until deadline: Date) throws -> [UInt8]? {
            var chunk = [UInt8](repeating: 0, count: 16 * 1024)
            while true {
                if let length, body.count == length { return body }
                let wanted = length.map { $0 - body.count } ?? 4 - header.count
                let left = deadline.timeIntervalSinceNow
                guard left > 0 else { return nil }
                var ready = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
                let polled = poll(&ready, 1, Int32(min(left * 1000, 60_000).rounded(.up)))
                if polled < 0 && errno != EINTR { throw AgentError.connection("reading failed") }
                guard polled > 0 else { continue }
                let got = chunk.withUnsafeMutableBytes {
                    recv(descriptor, $0.baseAddress!, min(wanted, $0.count), Int32(MSG_DONTWAIT))
                }
                if got < 0 {
                    if errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK { continue }
                    throw AgentError.connection("reading failed")
                }
                guard got > 0 else { throw AgentError.connection("the connection ended early") }
                guard length == nil else {
                    body += chunk[0..<got]
                    continue
                }
                header += chunk[0..<got]
                if header.count == 4 {
                    let size = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
                    guard size <= maxLength else { throw AgentError.connection("a frame of \(size) bytes is over the limit of \(maxLength)") }
                    length = size
                    body.reserveCapacity(size)
                }
            }
        }
    }

    /// Reads one frame of at most `maxLength` bytes and decodes it.
    package static func receive<T: Decodable>(_ type: T.Type, from descriptor: Int32, maxLength: Int) throws -> T {
        let body = try receiveFrame(from: descriptor, maxLength: maxLength)
        do {
            return try JSONDecoder().decode(T.self, from: Data(body))
        } catch {
            throw AgentError.connection("a frame is not the expected JSON")
        }
    }

    /// Reads one frame of at most `maxLength` bytes: its body.
    static func receiveFrame(from descriptor: Int32, maxLength: Int) throws -> [UInt8] {
        let header = try readExactly(4, from: descriptor)
        let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        guard length <= maxLength else { throw AgentError.connection("a frame of \(length) bytes is over the limit of \(maxLength)") }
        return try readExactly(length, from: descriptor)
    }

    private static func readExactly(_ count: Int, from descriptor: Int32) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress! + got, count - got) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw AgentError.connection(n == 0 ? "the connection ended early" : "reading timed out or failed") }
            got += n
        }
        return buffer
    }
}

/// Why talking to the agent did not work; clients then do the work themselves.
package enum AgentError: Error, Sendable {
    /// No agent socket, or not one we trust.
    case unavailable(String)
    /// The connection broke, timed out or carried something malformed.
    case connection(String)
}

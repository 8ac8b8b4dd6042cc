import Foundation
import TallyfyVaultCore

extension FuzzEntry {
    /// The vault path the fuzzed agent holds; a request naming it passes the
    /// `other-vault` check and reaches the token request's own checks.
    static let agentVaultPath = "/fuzz/vault"

    /// What an agent does with the bytes a client sends on a connection, up to
    /// the point where it would serve: the whole input goes down a Unix socket
    /// pair (the client then closes its end), the agent's `FrameReader` reads
    /// one frame from the other end, `AgentProtocol.decodeRequest` decodes it
    /// and `AgentServer.tokenRequest` turns a token request into the library's
    /// terms; the answer that refuses it is encoded as the agent would send it.
    ///
    /// Traps (`precondition`) when the reader hands over a body that is not
    /// exactly the frame's declared bytes, takes a frame over the 64 KiB limit,
    /// waits past its deadline on bytes that are all there, refuses a whole
    /// frame, or when a refusal echoes anything the client sent, an accepted
    /// request has another version, or a token request passes with no
    /// profile or with a minimum lifetime that is negative or not finite.
    @discardableResult
    package static func agentRequest(_ input: Data) -> Outcome {
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0 else { fatalError("socketpair failed: errno \(errno)") }
        defer { close(ends[1]) }
        var buffer = 1 << 20
        _ = setsockopt(ends[0], SOL_SOCKET, SO_SNDBUF, &buffer, socklen_t(MemoryLayout<Int32>.size))
        var written = 0
        input.withUnsafeBytes { bytes in
            while written < bytes.count {
                let n = send(ends[0], bytes.baseAddress! + written, bytes.count - written, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                guard n > 0 else { break }
                written += n
            }
        }
        close(ends[0])  // the client is done: what it did not send, it never will
        let sent = Array(input.prefix(written))

        var reader = AgentProtocol.FrameReader(maxLength: AgentProtocol.maxRequestLength)
        let declared = sent.count >= 4 ? Int(sent[0]) << 24 | Int(sent[1]) << 16 | Int(sent[2]) << 8 | Int(sent[3]) : nil
        let body: [UInt8]
        do {
            guard let read = try reader.read(from: ends[1], until: Date().addingTimeInterval(10)) else {
                preconditionFailure("the frame reader waited past its deadline on bytes that had all arrived")
            }
            body = read
        } catch {
            let whole = declared.map { $0 <= AgentProtocol.maxRequestLength && sent.count >= 4 + $0 } ?? false
            precondition(!whole, "a whole frame within the limit was refused: \(error)")
            return Outcome(expect: "dropped", stage: "frame", message: "\(error)")
        }
        guard let declared else { preconditionFailure("a frame was read from fewer than 4 bytes") }
        precondition(declared <= AgentProtocol.maxRequestLength, "a frame of \(declared) bytes passed the 64 KiB limit")
        precondition(body == Array(sent[4..<(4 + declared)]), "the frame's body is not the bytes its length names")

        let request: AgentProtocol.Request
        switch AgentProtocol.decodeRequest(body) {
        case .success(let decoded):
            precondition(decoded.version == AgentProtocol.version, "a request of version \(decoded.version) was accepted")
            request = decoded
        case .failure(let bad):
            precondition(badRequestMessages.contains(bad.message), "a bad-request message that is not one of the agent's own")
            precondition(encodable(.failure("bad-request", bad.message)), "the bad-request answer could not be sent")
            return Outcome(expect: "refused", stage: "decode", message: "bad-request: " + bad.message)
        }
        guard request.op == .token else { return Outcome(expect: "success", stage: "decode", message: "") }
        switch AgentServer.tokenRequest(request, vaultPath: agentVaultPath) {
        case .success(let tokenRequest):
            precondition(request.profile != nil && tokenRequest.profile == request.profile, "a token request without its profile")
            precondition(tokenRequest.minimumLifetime.isFinite && tokenRequest.minimumLifetime >= 0,
                "a minimum lifetime of \(tokenRequest.minimumLifetime) was accepted")
            return Outcome(expect: "success", stage: "request", message: "")
        case .failure(let refusal):
            precondition(encodable(refusal.answer), "a refusal could not be sent")
            precondition(refusal.answer.message.map { !$0.contains("\u{0}") } ?? true)
            return Outcome(expect: "refused", stage: "request", message: "\(refusal.answer.error ?? "failed"): \(refusal.answer.message ?? "")")
        }
    }

    /// Every message `decodeRequest` may refuse with: none quotes the client.
    static let badRequestMessages: Set<String> = [
        "this agent speaks protocol version \(AgentProtocol.version)",
        "the request is not the JSON object docs/agent.md describes",
        "unknown op; this agent answers token, status, lock, stop",
        "the request lacks a field or has one of the wrong type (docs/agent.md)",
    ]

    private static func encodable(_ answer: AgentProtocol.Answer) -> Bool {
        guard let bytes = try? JSONEncoder().encode(answer) else { return false }
        return bytes.count <= AgentProtocol.maxAnswerLength
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Asks a running agent for tokens: no key derivation, no key file read.
///
/// The agent is an accelerator, never the only way in: every answer other
/// than a token (no agent, locked, another vault, a broken connection) makes
/// the caller do the work itself, as it would without an agent. Only when
/// the agent tried to serve and failed (say Tallyfy refused the secret) is
/// its error the caller's error, so the failure is not repeated.
public struct AgentClient: Sendable {
    public var socketPath: String

    public init(socketPath: String) {
        self.socketPath = socketPath
    }

    /// The agent for this environment, unless `--no-agent` said not to ask.
    public init?(environment: [String: String], disabled: Bool) {
        guard !disabled else { return nil }
        self.init(socketPath: AgentSocket.path(environment: environment))
    }

    /// One request, one answer; written and read without Codable, which in
    /// a short-lived client costs more than the round trip (see
    /// `AgentProtocol+client.swift`).
    /// `timeout` bounds each wait on the socket (default `AgentProtocol.ioTimeout`).
    public func ask(_ request: AgentProtocol.Request, timeout: Duration? = nil) throws -> AgentProtocol.Answer {
        let body = try request.json()
        let descriptor = try AgentSocket.connect(to: socketPath)
        defer { close(descriptor) }
        if let timeout {
            let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
            AgentSocket.setTimeouts(descriptor, seconds: min(AgentProtocol.ioTimeout, max(0.001, seconds)))
        }
        try AgentProtocol.sendFrame(body, to: descriptor)
        return try AgentProtocol.Answer(json: AgentProtocol.receiveFrame(from: descriptor, maxLength: AgentProtocol.maxAnswerLength))
    }

    /// The token for `request` from the agent: the grant, `nil` when the
    /// caller should do the work itself, or the agent's failure as an error.
    public func grant(_ request: TokenRequest, vaultPath: String, timeout: Duration? = nil) throws -> TokenGrant? {
        guard request.renewal != .always, let vault = Self.resolved(vaultPath) else { return nil }
        let renewal: String
        switch request.renewal {
        case .whenStale: renewal = "whenStale"
        case .whenStaleStrictly: renewal = "whenStaleStrictly"
        case .never, .always: renewal = "never"
        }
        let wire = AgentProtocol.Request(op: .token, vault: vault, profile: request.profile, user: request.user,
            minimumLifetime: request.minimumLifetime, renewal: renewal)
        guard let answer = try? ask(wire, timeout: timeout) else { return nil }
        if answer.ok, let grant = answer.grant?.grant { return grant }
        guard answer.error == "failed", let message = answer.message else { return nil }
        throw VaultError(VaultError.Kind(exitStatus: answer.exitStatus ?? 69), message, hint: answer.hint)
    }

    /// The vault path as the agent knows it: absolute, links resolved.
    public static func resolved(_ path: String) -> String? {
        if case .etcd(let location)? = try? VaultLocation(parsing: path, environment: [:]) { return location.text }
        guard let real = realpath(path, nil) else { return nil }
        defer { free(real) }
        return String(cString: real)
    }
}

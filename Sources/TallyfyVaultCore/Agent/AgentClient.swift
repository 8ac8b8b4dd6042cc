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
    package var socketPath: String
    /// For the clock a grant's expiry is checked against (`VaultClock`).
    var environment: [String: String] = [:]

    package init(socketPath: String) {
        self.socketPath = socketPath
    }

    /// The agent for this environment, unless `--no-agent` said not to ask.
    public init?(environment: [String: String], disabled: Bool) {
        guard !disabled else { return nil }
        self.init(socketPath: AgentSocket.path(environment: environment))
        self.environment = environment
    }

    /// One request, one answer; written and read without Codable, which in
    /// a short-lived client costs more than the round trip (see
    /// `AgentProtocol+client.swift`).
    /// `timeout` bounds each wait on the socket (default `AgentProtocol.ioTimeout`).
    package func ask(_ request: AgentProtocol.Request, timeout: Duration? = nil) throws -> AgentProtocol.Answer {
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
        if answer.ok {
            // A confused or old agent's grant is not handed on: the caller unlocks the vault itself.
            guard var grant = answer.grant?.grant, Self.fits(grant, request, now: VaultClock.now(environment: environment)) else {
                return nil
            }
            grant.renewalFailure = grant.renewalFailure.map(Self.printable)  // printed in a warning line
            return grant
        }
        guard answer.error == "failed", let message = answer.message else { return nil }
        throw VaultError(VaultError.Kind(exitStatus: answer.exitStatus ?? 69), Self.printable(message),
            hint: answer.hint.map(Self.printable))
    }

    /// Whether an agent's grant is one this request may use: for the profile
    /// and user asked, with a token and URL the vault itself could hold,
    /// expiring in the future and, unless it is the degraded fallback a
    /// `whenStale` request accepts or a `never` request's sealed token, no
    /// sooner than the minimum asked for (less the protocol's deadline: the
    /// agent measured it a moment ago).
    static func fits(_ grant: TokenGrant, _ request: TokenRequest, now: Date) -> Bool {
        guard grant.profile == request.profile, grant.user?.lowercased() == request.user?.lowercased(),
            !grant.token.isEmpty, grant.token.utf8.count <= VaultBounds.maxTokenLength,
            grant.token.unicodeScalars.allSatisfy({ !$0.isControl && !$0.isWhitespaceOrNewline }),
            !grant.orgID.isEmpty, grant.orgID.utf8.count <= 200, grant.orgID.unicodeScalars.allSatisfy({ !$0.isControl }),
            !grant.apiURL.isEmpty, grant.apiURL.utf8.count <= VaultBounds.maxURLLength,
            grant.apiURL.unicodeScalars.allSatisfy({ !$0.isControl && !$0.isWhitespaceOrNewline }),
            VaultBounds.isValid(grant.expiresAt)
        else { return false }
        let left = grant.expiresAt.timeIntervalSince(now)
        guard left > 0 else { return false }
        if grant.renewalFailure != nil { return request.renewal == .whenStale }
        return request.renewal == .never || left >= request.minimumLifetime - AgentProtocol.ioTimeout
    }

    /// An agent's text as it may reach a terminal: control characters
    /// (ESC, newlines, …) written as `\u{1b}`, so no escape sequence or
    /// forged line gets through; at most 1,000 characters.
    package static func printable(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars.prefix(1000) {
            if scalar.isControl || scalar == "\u{2028}" || scalar == "\u{2029}" {
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// The vault path as the agent knows it: absolute, links resolved.
    package static func resolved(_ path: String) -> String? {
        if case .etcd(let location)? = try? VaultLocation(parsing: path, environment: [:]) { return location.text }
        guard let real = realpath(path, nil) else { return nil }
        defer { free(real) }
        return String(cString: real)
    }
}

import ArgumentParser
import Foundation
import TallyfyVault

/// The options `token`, `exec` and `export` share: whose token, how fresh.
struct TokenOptions: ParsableArguments {
    @Option(help: ArgumentHelp("A user's email: hand out that user's token instead of the application token.", valueName: "EMAIL"))
    var user: String?

    @Option(help: ArgumentHelp("Refresh first when less than this is left (default 1h, or TALLYFY_VAULT_MIN_TTL).", valueName: "DURATION"))
    var minTtl: String?

    @Flag(help: "Never contact Tallyfy: use the sealed token while it has not expired, else exit 78.")
    var noRefresh = false

    @Flag(help: ArgumentHelp("""
        When renewal fails, fail (69 or 75) even if the sealed token is still valid. Without it a sealed \
        token with more than a minute left is used, with one warning line.
        """))
    var strictTtl = false

    @Flag(help: "Do not ask a running agent; unlock the vault here.")
    var noAgent = false

    var selection: TokenSelection {
        TokenSelection(user: user, minTTL: minTtl, noRefresh: noRefresh, strict: strictTtl, noAgent: noAgent)
    }

    func grant(_ global: GlobalOptions) async throws -> TokenGrant {
        try await selection.grant(global.context)
    }
}

/// Whose token and how fresh, as plain values (see `CommandContext`).
struct TokenSelection {
    var user: String?
    var minTTL: String?
    var noRefresh = false
    var strict = false
    var noAgent = false

    /// The token: from a running agent (no unlocking here at all), else from
    /// the vault when fresh (no HTTP client, no event loop), else renewed
    /// from Tallyfy, else (renewal failed, token still valid) the sealed one
    /// with a warning.
    func grant(_ context: CommandContext) async throws -> TokenGrant {
        let request = try context.tokenRequest(user: user, minimumLifetime: minTTL, noRefresh: noRefresh, strict: strict)
        if let agent = AgentClient(environment: context.environment, disabled: noAgent),
            let grant = try agent.grant(request, vaultPath: context.vaultPath)
        {
            return warnIfDegraded(grant, request)
        }
        let broker = try context.broker()
        if let grant = try broker.sealedGrant(request) { return grant }
        return warnIfDegraded(try await broker.grant(request), request)
    }

    private func warnIfDegraded(_ grant: TokenGrant, _ request: TokenRequest) -> TokenGrant {
        if let reason = grant.renewalFailure {
            let what = request.user.map { "user token for \($0)" } ?? "application token for profile \"\(request.profile)\""
            Output.note("warning: could not renew the \(what) (\(reason)); using the sealed one, valid until \(ChildEnvironment.rfc3339(grant.expiresAt))")
        }
        return grant
    }
}

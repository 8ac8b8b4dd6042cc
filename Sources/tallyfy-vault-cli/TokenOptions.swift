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

    /// The token, the one way every command gets it: from a running agent
    /// (no unlocking here at all), else one pass over the vault — read once,
    /// then the secrets to open it (so a missing vault is reported before
    /// any prompt), then `TokenBroker`'s decision. A grant that rides out a
    /// failed renewal is reported here, in one warning line.
    ///
    /// With a `deadline` (the helper's) the agent is asked only for what is
    /// left of it, and a renewal still running at the deadline counts as
    /// Tallyfy not answering.
    func grant(
        _ context: CommandContext, deadline: Duration? = nil, secrets: (() throws -> [UnlockSecret])? = nil
    ) async throws -> TokenGrant {
        let request = try context.tokenRequest(user: user, minimumLifetime: minTTL, noRefresh: noRefresh, strict: strict)
        let unlockSecrets = secrets ?? context.sources.secretsToOpen
        if let seen = Handover.seen(for: request, vault: context.vaultPath, environment: context.environment) {
            // The launcher asked the agent, read the vault and found the
            // token too old: renew now, without reading it again first.
            let broker = TokenBroker(store: context.store, secrets: try unlockSecrets(), environment: context.environment)
            return warnIfDegraded(try await broker.grant(request, handedOver: seen, deadline: deadline), request)
        }
        let start = ContinuousClock.now
        if let agent = AgentClient(environment: context.environment, disabled: noAgent),
            deadline.map({ $0 > .milliseconds(100) }) ?? true,
            let grant = try agent.grant(request, vaultPath: context.vaultPath, timeout: deadline)
        {
            return warnIfDegraded(grant, request)
        }
        let left = deadline.map { max(.zero, $0 - (ContinuousClock.now - start)) }
        let (broker, vault) = try await context.pass(secrets: unlockSecrets)
        return warnIfDegraded(try await broker.grant(request, from: vault, deadline: left), request)
    }

    /// For a consumer that runs on and renews (`exec --keep-fresh`,
    /// `exec --proxy`, `proxy`): the request, and where its grants come from
    /// — a running agent first, else `TokenBroker` with the unlock sources
    /// read afresh at each grant, so no key is kept between renewals. Such a
    /// consumer needs a source it can read again without asking (a key file,
    /// a passphrase file or variable, a systemd credential) or an agent.
    /// `what` names it in messages (`exec --keep-fresh`).
    func renewingSource(_ context: CommandContext, what: String) async throws -> (TokenRequest, TokenSource) {
        guard !noRefresh else {
            throw ValidationError("\(what.split(separator: " ").last ?? "") renews the token, which --no-refresh forbids: use one or the other")
        }
        try await context.store.checkAccess()
        let request = try context.tokenRequest(user: user, minimumLifetime: minTTL, noRefresh: false, strict: strict)
        let agent = AgentClient(environment: context.environment, disabled: noAgent)
        let agentServes = agent.flatMap { try? $0.grant(request, vaultPath: context.vaultPath) } != nil
        guard try agentServes || !context.sources.available().isEmpty else {
            throw VaultError(.configuration,
                "\(what) unlocks the vault again at each renewal, and a passphrase typed at the prompt can't be asked for again",
                hint: "unlock with --key-file or --passphrase-file (or TALLYFY_VAULT_PASSPHRASE, or a systemd credential), or run the agent (`tallyfy-vault agent`)")
        }
        let unlocking = TokenSource.reopening {
            // Read afresh each time: nothing secret is kept between renewals,
            // and a source that has gone away is an error, never a prompt.
            let secrets = try context.sources.available()
            guard !secrets.isEmpty else {
                throw VaultError(.configuration, "the unlock source used at start is no longer there")
            }
            return TokenBroker(store: context.store, secrets: secrets, environment: context.environment)
        }
        return (request, TokenSource.agentFirst(agent, vaultPath: context.vaultPath, else: unlocking))
    }

    /// The first grant of a `renewingSource`, with the warning line when it
    /// rides out a failed renewal.
    func firstGrant(_ request: TokenRequest, from source: TokenSource) async throws -> TokenGrant {
        warnIfDegraded(try await source.grant(request), request)
    }

    private func warnIfDegraded(_ grant: TokenGrant, _ request: TokenRequest) -> TokenGrant {
        if let reason = grant.renewalFailure {
            let what = request.user.map { "user token for \($0)" } ?? "application token for profile \"\(request.profile)\""
            Output.note("warning: could not renew the \(what) (\(reason)); using the sealed one, valid until \(ChildEnvironment.rfc3339(grant.expiresAt))")
        }
        return grant
    }
}

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

    var selection: TokenSelection { TokenSelection(user: user, minTTL: minTtl, noRefresh: noRefresh, strict: strictTtl) }

    func grant(_ global: GlobalOptions) throws -> TokenGrant {
        try selection.grant(global.context)
    }
}

/// Whose token and how fresh, as plain values (see `CommandContext`).
struct TokenSelection {
    var user: String?
    var minTTL: String?
    var noRefresh = false
    var strict = false

    /// The token: from the vault when fresh (no HTTP client, no event loop),
    /// else renewed from Tallyfy, else (renewal failed, token still valid)
    /// the sealed one with a warning.
    func grant(_ context: CommandContext) throws -> TokenGrant {
        let request = try context.tokenRequest(user: user, minimumLifetime: minTTL, noRefresh: noRefresh, strict: strict)
        let broker = try context.broker()
        if let grant = try broker.sealedGrant(request) { return grant }
        let grant = try runBlocking { try await broker.grant(request) }
        if let reason = grant.renewalFailure {
            Output.note("warning: could not renew the \(broker.describe(request)) (\(reason)); using the sealed one, valid until \(ChildEnvironment.rfc3339(grant.expiresAt))")
        }
        return grant
    }
}

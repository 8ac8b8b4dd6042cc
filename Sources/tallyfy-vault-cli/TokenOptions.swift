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

    var selection: TokenSelection { TokenSelection(user: user, minTTL: minTtl, noRefresh: noRefresh) }

    func grant(_ global: GlobalOptions) throws -> TokenGrant {
        try selection.grant(global.context)
    }
}

/// Whose token and how fresh, as plain values (see `CommandContext`).
struct TokenSelection {
    var user: String?
    var minTTL: String?
    var noRefresh = false

    /// The token: from the vault when fresh (no HTTP client, no event loop),
    /// else renewed from Tallyfy.
    func grant(_ context: CommandContext) throws -> TokenGrant {
        let request = try context.tokenRequest(user: user, minimumLifetime: minTTL, noRefresh: noRefresh)
        let broker = try context.broker()
        if let grant = try broker.sealedGrant(request) { return grant }
        return try runBlocking { try await broker.renewedGrant(request) }
    }
}

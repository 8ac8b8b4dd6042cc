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

    func request(profile: String, environment: [String: String]) throws -> TokenRequest {
        TokenRequest(
            profile: profile, user: user,
            minimumLifetime: try TokenPolicy.minimumLifetime(option: minTtl, environment: environment),
            allowRefresh: !noRefresh)
    }

    /// The token: from the vault when fresh (no HTTP client, no event loop),
    /// else renewed from Tallyfy.
    func grant(_ global: GlobalOptions) throws -> TokenGrant {
        let request = try request(profile: global.profileName, environment: global.environment)
        let broker = try global.broker()
        if let grant = try broker.sealedGrant(request) { return grant }
        return try runBlocking { try await broker.renewedGrant(request) }
    }
}

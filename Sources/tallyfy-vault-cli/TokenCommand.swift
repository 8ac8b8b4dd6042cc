import ArgumentParser
import Foundation
import TallyfyVault

/// `token`: print a valid bearer token.
struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Print a valid bearer token, refreshing it first when less than --min-ttl is left.",
        discussion: """
            --format helper prints {"token":"…","expiresInSeconds":N}, the contract of the official \
            Tallyfy CLI's auth.apiKeyHelper: it answers within 5 s whatever Tallyfy does, never prompts \
            (it needs a key file, passphrase file or variable), and when renewal fails or hangs it hands \
            out the sealed token while that has more than a minute left, with one warning line.
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case raw, json, helper }

    @OptionGroup var global: GlobalOptions
    @OptionGroup var options: TokenOptions
    @Option(help: "raw, json or helper.") var format: Format = .raw

    struct HelperOutput: Encodable {
        var token: String
        var expiresInSeconds: Int
    }

    struct JSONOutput: Encodable {
        var token: String
        var expiresAt: String
        var expiresInSeconds: Int
        var profile: String
        var orgId: String
        var apiUrl: String
        var user: String?
    }

    func run() async throws {
        if format == .helper {
            let grant = try await HelperGrant.grant(context: global.context, selection: options.selection)
            let left = max(0, Int(grant.expiresAt.timeIntervalSince(VaultClock.now()).rounded(.down)))
            Output.line(try Output.json(HelperOutput(token: grant.token, expiresInSeconds: left)))
            return
        }
        let grant = try await options.grant(global)
        let left = max(0, Int(grant.expiresAt.timeIntervalSince(VaultClock.now()).rounded(.down)))
        switch format {
        case .raw:
            Output.line(grant.token)
        case .helper:
            Output.line(try Output.json(HelperOutput(token: grant.token, expiresInSeconds: left)))
        case .json:
            Output.line(try Output.json(JSONOutput(
                token: grant.token, expiresAt: ChildEnvironment.rfc3339(grant.expiresAt), expiresInSeconds: left,
                profile: grant.profile, orgId: grant.orgID, apiUrl: grant.apiURL, user: grant.user)))
        }
    }
}

import ArgumentParser
import Foundation
import TallyfyVault

/// `credentials set|show|remove`: a profile's client credentials.
struct Credentials: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Store, show or remove the client credentials of a profile.",
        subcommands: [Set.self, Show.self, Remove.self])

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Store the client ID and secret Tallyfy Support issued.",
            discussion: "The secret is read from a no-echo prompt, or from standard input with --secret-stdin; never from the command line.")
        @OptionGroup var global: GlobalOptions

        @Option(help: "The Tallyfy organization ID.") var org: String
        @Option(help: "The client ID.") var clientId: String
        @Flag(help: "Read the client secret from standard input.") var secretStdin = false
        @Option(help: ArgumentHelp(
            "OAuth token endpoint (default \(TallyfyVault.Credentials.defaultTokenURL)); `discover` tries the URLs Tallyfy documents, without the secret, and keeps the first that answers as a token endpoint.",
            valueName: "URL"))
        var tokenUrl: String?
        @Option(help: ArgumentHelp("API base URL (default \(TallyfyVault.Credentials.defaultAPIURL)).", valueName: "URL"))
        var apiUrl: String?

        func run() async throws {
            // Check what can be checked before asking for a key or the secret.
            if secretStdin { try TallyfyVault.Credentials.refuseTerminalStandardInput() }
            let discover = tokenUrl == TallyfyClient.discoverTokenURL
            try TallyfyVault.Credentials.validate(
                profile: global.profileName, orgID: org, clientID: clientId, tokenURL: discover ? nil : tokenUrl, apiURL: apiUrl)
            var tokenUrl = self.tokenUrl
            if discover {
                let found = try await TallyfyClient.discoverTokenURL(environment: global.context.environment)
                Output.note("\(found) answers as an OAuth token endpoint (asked without the secret); storing it as the token URL")
                tokenUrl = found
            }
            let secrets = try await global.secretsToOpen()
            let clientSecret = try TallyfyVault.Credentials.readSecret(fromStandardInput: secretStdin, prompt: "Client secret: ")
            let profile = global.profileName
            try await global.store.update(with: secrets) { vault in
                try TallyfyVault.Credentials.set(
                    in: vault, profile: profile, orgID: org, clientID: clientId, secret: clientSecret,
                    tokenURL: tokenUrl, apiURL: apiUrl, now: VaultClock.now())
            }
            Output.note("stored the credentials of profile \"\(profile)\"; run `tallyfy-vault login` to check them")
            let warnings = TallyfyIdentifiers.warnings(orgID: org, clientID: clientId)
            for warning in warnings { Output.note("warning: \(warning)") }
            if !warnings.isEmpty {
                Output.note("hint: stored anyway (the emulator and test set-ups may use other IDs); "
                    + "for real Tallyfy, use the IDs Tallyfy Support sent")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a profile's credentials, the secret masked.")
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let vault = try await global.store.open(with: try await global.secretsToOpen())
            let profile = try TokenBroker.profile(global.profileName, in: vault)
            Output.line(Table.render([
                ["profile", global.profileName],
                ["org", profile.orgID],
                ["client id", profile.clientID],
                ["client secret", "******** (set \(ChildEnvironment.rfc3339(profile.secretSetAt)))"],
                ["token url", profile.tokenURL],
                ["api url", profile.apiURL],
            ]))
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a profile's credentials and its tokens.")
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let profile = global.profileName
            try await global.store.update(with: try global.secretsToOpen()) { try TallyfyVault.Credentials.remove(from: $0, profile: profile) }
            Output.note("removed profile \"\(profile)\" and its tokens")
        }
    }
}

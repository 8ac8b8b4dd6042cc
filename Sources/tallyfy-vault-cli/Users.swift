import ArgumentParser
import Foundation
import TallyfyVault

extension UserRole: ExpressibleByArgument {}

/// `users create|token|list|forget`: provisioned users and their sealed tokens.
struct Users: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Provision users and keep their 90-day user-scoped tokens.",
        subcommands: [Create.self, Token.self, List.self, Forget.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Provision a user in the organization, with the application token.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The user's email (unique in the organization).") var email: String
        @Option(help: "1 to 32 characters.") var firstName: String
        @Option(help: "1 to 32 characters.") var lastName: String
        @Option(help: "admin, standard or light.") var role: UserRole?
        @Option(help: "An IANA time zone, e.g. Europe/London.") var timezone: String?

        func run() async throws {
            let user = NewUser(email: email, firstName: firstName, lastName: lastName, role: role, timezone: timezone)
            try user.validate()  // before asking for any key
            let broker = try await global.broker()
            let profile = global.profileName
            try await broker.createUser(profile: profile, user: user)
            Output.note("created user \(email) in profile \"\(profile)\"; `tallyfy-vault users token \(email)` issues a token for them")
        }
    }

    struct Token: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Issue a user-scoped token and seal it.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The user's email.") var email: String

        func run() async throws {
            try NewUser.validateEmail(email)
            let broker = try await global.broker()
            let profile = global.profileName
            let grant = try await broker.issueUserToken(profile: profile, email: email)
            Output.note("sealed a new token for \(email), valid until \(ChildEnvironment.rfc3339(grant.expiresAt))")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the sealed user tokens (no secrets shown).")
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let vault = try await global.store.open(with: try await global.secretsToOpen())
            _ = try TokenBroker.profile(global.profileName, in: vault)
            let now = VaultClock.now()
            let rows = try vault.userTokens(profile: global.profileName).map { record in
                [record.email, ChildEnvironment.rfc3339(record.token.expiresAt), Lifetime.describe(record.token.expiresAt, now: now)]
            }
            if rows.isEmpty {
                Output.note("profile \"\(global.profileName)\" has no sealed user tokens")
            } else {
                Output.line(Table.render([["EMAIL", "EXPIRES", "LEFT"]] + rows))
            }
        }
    }

    struct Forget: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Drop a user's sealed token (the user stays in Tallyfy).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The user's email.") var email: String

        func run() async throws {
            let profile = global.profileName
            try await global.store.update(with: try global.secretsToOpen()) { vault in
                guard vault.removeUserToken(profile: profile, email: email) else {
                    throw VaultError(.usage, "profile \"\(profile)\" has no sealed token for \(email); nothing was changed",
                        hint: "`tallyfy-vault users list` shows the sealed ones")
                }
            }
            Output.note("dropped the sealed token of \(email)")
        }
    }
}

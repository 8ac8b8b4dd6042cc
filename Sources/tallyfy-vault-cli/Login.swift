import ArgumentParser
import TallyfyVault

/// `login`: the client-credentials flow, now.
struct Login: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Obtain a new application token with the stored client credentials and seal it.")

    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let broker = try await global.broker()
        let request = TokenRequest(profile: global.profileName, renewal: .always)
        let grant = try await broker.renewedGrant(request)
        Output.note("sealed a new application token for profile \"\(grant.profile)\", valid until \(ChildEnvironment.rfc3339(grant.expiresAt))")
    }
}

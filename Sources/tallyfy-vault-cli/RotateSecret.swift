import ArgumentParser
import Foundation
import TallyfyVault

/// `rotate-secret`: replace the client secret, proven first.
struct RotateSecret: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replace the client secret: the new one is proven by obtaining a token with it, then sealed.",
        discussion: """
            The new secret comes from a no-echo prompt (asked twice) or standard input (--secret-stdin). \
            On any failure nothing changes. --no-verify seals it unproven (for when Tallyfy is down). \
            This rotates the Tallyfy client secret; to change the vault's own keys use `keys` and `rekey`.
            """)

    @OptionGroup var global: GlobalOptions
    @Flag(help: "Read the new client secret from standard input.") var secretStdin = false
    @Flag(help: "Seal the new secret without proving it against Tallyfy first.") var noVerify = false

    /// How `TallyfyClient` words an `invalid_client` or 401 answer (matched
    /// by `VaultError.Cause`; the text only to reword the start of the message).
    static let credentialsRefused = "Tallyfy refused the client credentials"

    func run() async throws {
        if secretStdin { try TallyfyVault.Credentials.refuseTerminalStandardInput() }
        let broker = try await global.broker()
        let newSecret = try TallyfyVault.Credentials.readSecret(fromStandardInput: secretStdin, prompt: "New client secret: ")
        if !secretStdin {
            let again = try TallyfyVault.Credentials.readSecret(fromStandardInput: false, prompt: "Repeat it: ")
            guard again == newSecret else { throw VaultError(.usage, "the two secrets differ; nothing was changed") }
        }
        let profile = global.profileName
        let verify = !noVerify
        let token: SealedToken?
        do {
            token = try await broker.rotateSecret(profile: profile, newSecret: newSecret, verify: verify)
        } catch let error as VaultError where verify && error.cause == .tallyfyRefusedCredentials && error.message.hasPrefix(Self.credentialsRefused) {
            // The only request made is the proof of the new secret, so the
            // refusal is of that one; the vault was not written.
            throw VaultError(.refused,
                "Tallyfy refused the new client secret" + error.message.dropFirst(Self.credentialsRefused.count)
                    + "; the stored secret is unchanged and still in use",
                hint: "check the new secret (Tallyfy shows it once, when it is made) and run rotate-secret again; "
                    + "until then everything keeps using the old one")
        }
        if let token {
            Output.note("rotated the client secret of profile \"\(profile)\"; the new secret obtained a token valid until \(ChildEnvironment.rfc3339(token.expiresAt))")
        } else {
            Output.note("rotated the client secret of profile \"\(profile)\" WITHOUT verifying it; run `tallyfy-vault login` once Tallyfy is reachable")
        }
    }
}

import Foundation
import TallyfyVault

/// `token --format helper`: a token for Tallyfy's CLI within a fixed time.
///
/// Tallyfy's CLI runs its `auth.apiKeyHelper` before every command, kills it
/// after 10 s and then fails the command (tallyfy/cli, internal/auth/helper.go).
/// So the helper answers well inside that whatever Tallyfy or an agent does:
/// one deadline for the whole answer, counted from when the launcher started
/// (`Handover.launchedAtVariable`), the agent's wait included. It
/// never prompts (there is no terminal to prompt on). Which token it hands
/// out, and when it rides out a failure, is decided where every other
/// command decides it (`TokenBroker.grant(_:from:deadline:)`): a renewal
/// that has not finished by the deadline counts as Tallyfy not answering.
enum HelperGrant {
    /// The whole call, agent, unlock and renewal included: half of the CLI's 10 s.
    static let bound: Duration = .seconds(5)

    static func grant(context: CommandContext, selection: TokenSelection) async throws -> TokenGrant {
        let deadline = Handover.remaining(of: bound, environment: context.environment)
        return try await selection.grant(context, deadline: deadline) {
            let secrets = try context.sources.available()
            guard !secrets.isEmpty else {
                throw VaultError(
                    .configuration, "no unlock source for `token --format helper`, which never prompts",
                    hint: "set TALLYFY_VAULT_KEY_FILE (or TALLYFY_VAULT_PASSPHRASE_FILE) in the helper's environment, "
                        + "e.g. via Tallyfy CLI's settings `env`")
            }
            return secrets
        }
    }
}

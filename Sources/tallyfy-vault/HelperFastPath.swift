#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
import TallyfyVaultCore

/// `token --format helper` answered from a running agent, without starting
/// the full CLI: Tallyfy's CLI runs its `auth.apiKeyHelper` before every
/// command, so this path is worth the few lines. Only the exact spelling
///
///     [--vault P] [--profile N] token --format helper [--user E] [--min-ttl D]
///
/// (options as `--name value` or `--name=value`) with an agent that hands
/// out a token without a warning is served here; everything else, and every
/// agent answer but a plain token, goes to the full CLI, which does the same
/// and reports.
enum HelperFastPath {
    static func answer(_ arguments: [String]) -> String? {
        var context = CommandContext()
        var user: String?
        var minimumLifetime: String?
        var sawToken = false
        var sawHelper = false
        var index = 0
        while index < arguments.count {
            let word = arguments[index]
            index += 1
            if word == "token" && !sawToken {
                sawToken = true
                continue
            }
            guard let (name, value) = ExecFastPath.option(word, in: arguments, before: arguments.count, at: &index) else {
                return nil
            }
            switch (name, sawToken) {
            case ("--vault", _): context.vault = value
            case ("--profile", _): context.profile = value
            case ("--format", true) where value == "helper": sawHelper = true
            case ("--user", true): user = value
            case ("--min-ttl", true): minimumLifetime = value
            default: return nil
            }
        }
        guard sawToken, sawHelper else { return nil }
        ProcessHardening.protect()  // a token is about to be in memory
        guard let request = try? context.tokenRequest(user: user, minimumLifetime: minimumLifetime, noRefresh: false),
            let agent = AgentClient(environment: context.environment, disabled: false),
            let grant = try? agent.grant(request, vaultPath: context.vaultPath), grant.renewalFailure == nil
        else { return nil }
        let left = max(0, Int(grant.expiresAt.timeIntervalSince(VaultClock.now(environment: context.environment)).rounded(.down)))
        return try? PlainJSON.string(HelperAnswer(token: grant.token, expiresInSeconds: left))
    }

    /// The official CLI's helper contract: `{"expiresInSeconds":N,"token":"…"}`.
    private struct HelperAnswer: Encodable {
        var token: String
        var expiresInSeconds: Int
    }
}

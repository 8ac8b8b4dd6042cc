import Foundation
import TallyfyVault

#if canImport(Glibc)
    import Glibc
#endif

/// `token --format helper`: a token for Tallyfy's CLI within a fixed time.
///
/// Tallyfy's CLI runs its `auth.apiKeyHelper` before every command, kills it
/// after 10 s and then fails the command (tallyfy/cli, internal/auth/helper.go).
/// So the helper must answer well inside that whatever Tallyfy does: it
/// never prompts (there is no terminal to prompt on), renews as `token` does,
/// and when renewal fails, or has not finished after `bound`, it hands out
/// the sealed token while that is still valid for more than `floor`, with one
/// warning line on standard error. Only with no usable sealed token does it fail.
enum HelperGrant {
    /// The whole call, unlock and renewal included: half of the CLI's 10 s.
    static let bound: TimeInterval = 5
    /// A sealed token with less than this left is not handed out as a fallback.
    static let floor = TokenPolicy.fallbackFloor

    static func grant(context: CommandContext, selection: TokenSelection) async throws -> TokenGrant {
        let started = Date()
        let request = try context.tokenRequest(user: selection.user, minimumLifetime: selection.minTTL, noRefresh: selection.noRefresh)
        // A running agent answers in a millisecond, with nothing unlocked here.
        if let agent = AgentClient(environment: context.environment, disabled: selection.noAgent),
            let grant = try agent.grant(request, vaultPath: context.vaultPath)
        {
            return grant
        }
        ProcessHardening.protect()
        try context.store.checkAccess()
        let secrets = try context.sources.available()
        guard !secrets.isEmpty else {
            throw VaultError(
                .configuration, "no unlock source for `token --format helper`, which never prompts",
                hint: "set TALLYFY_VAULT_KEY_FILE (or TALLYFY_VAULT_PASSPHRASE_FILE) in the helper's environment, "
                    + "e.g. via Tallyfy CLI's settings `env`")
        }
        let broker = TokenBroker(store: context.store, secrets: secrets, environment: context.environment)
        if let fresh = try broker.sealedGrant(request) { return fresh }

        // What to hand out if renewal fails or takes too long: read now,
        // without the lock or the network.
        var sealedRequest = request
        sealedRequest.renewal = .never
        let fallback = (try? broker.sealedGrant(sealedRequest)).flatMap { $0 }
            .flatMap { $0.expiresAt.timeIntervalSince(VaultClock.now(environment: context.environment)) > floor ? $0 : nil }

        let race = Race()
        let remaining = max(0.5, bound - Date().timeIntervalSince(started))
        DispatchQueue.global().asyncAfter(deadline: .now() + remaining) {
            guard race.claim() else { return }
            // The renewal is abandoned: the process ends, which releases the
            // vault lock; a write in flight leaves the old or the new vault.
            if let fallback {
                warn("Tallyfy did not answer within \(Int(bound)) s", fallback: fallback)
                emit(fallback)
                fflush(nil)
                _exit(0)
            }
            FileHandle.standardError.write(Data("""
                tallyfy-vault: Tallyfy did not answer within \(Int(bound)) s and no sealed token has more than a minute left
                tallyfy-vault: hint: run `tallyfy-vault doctor` to see why, and `tallyfy-vault login` once Tallyfy answers

                """.utf8))
            _exit(69)
        }

        let outcome: Result<TokenGrant, Error>
        do {
            outcome = .success(try await broker.renewedGrant(request))
        } catch {
            outcome = .failure(error)
        }
        // The watchdog already answered: wait for it to end the process.
        guard race.claim() else { while true { pause() } }
        switch outcome {
        case .success(let grant):
            return grant
        case .failure(let error as VaultError) where fallback != nil:
            warn("renewal failed: \(error.message)", fallback: fallback!)
            return fallback!
        case .failure(let error):
            throw error
        }
    }

    private static func warn(_ reason: String, fallback: TokenGrant) {
        Output.note("warning: \(reason); using the sealed token, valid until \(ChildEnvironment.rfc3339(fallback.expiresAt))")
    }

    private static func emit(_ grant: TokenGrant) {
        let left = max(0, Int(grant.expiresAt.timeIntervalSince(VaultClock.now()).rounded(.down)))
        if let line = try? Output.json(TokenCommand.HelperOutput(token: grant.token, expiresInSeconds: left)) {
            Output.line(line)
        }
    }

    /// Whoever claims first answers: the renewal or the watchdog.
    private final class Race: @unchecked Sendable {
        private let lock = NSLock()
        private var claimed = false
        func claim() -> Bool {
            lock.lock()
            defer { lock.unlock() }
            if claimed { return false }
            claimed = true
            return true
        }
    }
}

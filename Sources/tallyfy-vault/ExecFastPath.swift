#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif
import TallyfyVaultCore

/// Recognises a plain `exec` invocation by hand, without ArgumentParser.
///
/// Only the exact grammar below is taken here:
///
///     [global options] exec [global or exec options] -- COMMAND [ARGS…]
///
/// with options written `--name value` or `--name=value`. Anything else (help,
/// an unknown or misspelt option, a missing `--`) returns `nil`, and the
/// launcher hands the whole command line to the full CLI, which then gives the
/// same result or its message.
enum ExecFastPath {
    struct Invocation {
        var context = CommandContext()
        var user: String?
        var minimumLifetime: String?
        var noRefresh = false
        var noAgent = false
        /// `--mask` / `--no-mask`; `nil`: as `TALLYFY_VAULT_MASK` says.
        var mask: Bool?
        /// `--proxy`: the full CLI runs the proxy; nothing is unlocked here.
        var proxy = false
        var command: [String] = []

        /// What the launcher does with this `exec`.
        enum Decision {
            /// Replace the process with the command, in this environment.
            case run([String: String])
            /// Run the command as our child with this grant, its output
            /// masked (`exec --mask`), and exit with its status.
            case runMasked(TokenGrant)
            /// Hand the command line to the full CLI, with `Handover.note`
            /// when this pass found the sealed token too old (the CLI renews
            /// at once), `nil` for anything else (an error, a nested exec, no
            /// unlock source at hand), which the CLI then handles and reports.
            case handOver(note: String?)
        }

        func decide() -> Decision {
            ProcessHardening.protect()
            // A proxied exec hands the command a capability, never a token:
            // the full CLI starts the proxy (and reports any error).
            if proxy { return .handOver(note: nil) }
            // Without HOME, the full CLI serves: this launcher is released
            // as a static executable, and looking the home up through NSS
            // would load the system's modules into its own glibc (SECURITY.md).
            guard HomeFolder.fromEnvironment(context.environment) != nil else { return .handOver(note: nil) }
            // The hand-out below is recorded as an `exec`; a refusal is met
            // again, and recorded once, by the CLI this hands over to.
            AuditTrail.operation = "exec"
            AuditTrail.recordsRefusals = false
            // A bad TALLYFY_VAULT_MASK is reported by the CLI.
            guard let masked = try? OutputMasking.requested(flag: mask, environment: context.environment) else { return .handOver(note: nil) }
            func handOut(_ grant: TokenGrant) -> Decision {
                masked ? .runMasked(grant) : .run(ChildEnvironment.build(parent: context.environment, grant: grant))
            }
            // Never prompt here: without a key file or passphrase at hand, the
            // CLI asks (once).
            guard (try? ChildEnvironment.refuseNesting(context.environment)) != nil,
                let request = try? context.tokenRequest(user: user, minimumLifetime: minimumLifetime, noRefresh: noRefresh)
            else { return .handOver(note: nil) }
            // A running agent answers without any unlocking here. Anything it
            // can't serve, or an error, goes to the full CLI, which says why.
            if let agent = AgentClient(environment: context.environment, disabled: noAgent),
                let grant = try? agent.grant(request, vaultPath: context.vaultPath), grant.renewalFailure == nil
            {
                return handOut(grant)
            }
            // One pass: the vault read once (the summary only when a
            // passphrase might be spent), unlocked once, decided once.
            // A PKCS#11 token is left to the full CLI: a wrong PIN tried
            // here and then again there would spend two of a real token's
            // few tries (and the module is loaded only where it is used).
            guard let available = try? context.sources.available().filter({ $0.kind != .pkcs11 }), !available.isEmpty,
                let read = try? context.store.readLocally(withSummary: available.contains { $0.kind != .keyFile }),
                case let secrets = ExecFastPath.worthUnlocking(available, for: request, read: read, context: context), !secrets.isEmpty,
                case let broker = TokenBroker(store: context.store, secrets: secrets, environment: context.environment),
                let vault = try? broker.openLocally(read),
                case let decided = Result(catching: { try broker.sealedGrant(request, in: vault) })
            else { return .handOver(note: nil) }
            switch decided {
            case .success(let grant?): return handOut(grant)
            case .success(nil):
                let seen = try? broker.sealedToken(request, in: vault)
                return .handOver(note: Handover.note(seen: seen?.identity, for: request, vault: context.vaultPath))
            case .failure: return .handOver(note: nil)
            }
        }
    }

    /// A key file unwraps a slot for the cost of a hash, so it is always
    /// tried. A passphrase costs an Argon2id derivation: it is spent here only
    /// when the clear summary says the sealed token will do; otherwise the
    /// full CLI, which renews, derives the key once for the whole run.
    private static func worthUnlocking(_ secrets: [UnlockSecret], for request: TokenRequest, read: VaultRead, context: CommandContext) -> [UnlockSecret] {
        let keyFiles = secrets.filter { $0.kind == .keyFile }
        guard keyFiles.count < secrets.count else { return secrets }
        let broker = TokenBroker(store: context.store, secrets: [], environment: context.environment)
        return broker.summaryPromisesSealedToken(request, in: read) ? secrets : keyFiles
    }

    private static let globalOptions: Set<String> = ["--vault", "--profile", "--key-file", "--passphrase-file"]
    private static let execOptions: Set<String> = ["--user", "--min-ttl"]

    static func parse(_ arguments: [String]) -> Invocation? {
        guard let terminator = arguments.firstIndex(of: "--"), terminator + 1 < arguments.count else { return nil }
        var invocation = Invocation()
        invocation.command = Array(arguments[(terminator + 1)...])
        var sawExec = false
        var index = 0
        while index < terminator {
            let word = arguments[index]
            index += 1
            if word == "exec" && !sawExec {
                sawExec = true
                continue
            }
            if word == "--no-refresh" && sawExec {
                invocation.noRefresh = true
                continue
            }
            // Matters only when renewal fails, which happens in the full CLI.
            if word == "--strict-ttl" && sawExec { continue }
            if word == "--no-agent" && sawExec {
                invocation.noAgent = true
                continue
            }
            if word == "--proxy" && sawExec {
                invocation.proxy = true
                continue
            }
            if (word == "--mask" || word == "--no-mask") && sawExec {
                invocation.mask = word == "--mask"
                continue
            }
            guard let (name, value) = option(word, in: arguments, before: terminator, at: &index) else { return nil }
            guard globalOptions.contains(name) || (sawExec && execOptions.contains(name)) else { return nil }
            switch name {
            case "--vault": invocation.context.vault = value
            case "--profile": invocation.context.profile = value
            case "--key-file": invocation.context.keyFile = value
            case "--passphrase-file": invocation.context.passphraseFile = value
            case "--user": invocation.user = value
            default: invocation.minimumLifetime = value
            }
        }
        return sawExec ? invocation : nil
    }

    /// An option and its value, written `--name value` or `--name=value`
    /// (`word` is the name; `index` points past it and moves past the value);
    /// `nil` when the value is missing. The launcher's hand-written grammars
    /// (`exec`, `token --format helper`) share it.
    static func option(_ word: String, in arguments: [String], before end: Int, at index: inout Int) -> (String, String)? {
        if let equals = word.firstIndex(of: "="), word.hasPrefix("--") {
            return (String(word[..<equals]), String(word[word.index(after: equals)...]))
        }
        guard index < end, !arguments[index].hasPrefix("-") else { return nil }
        index += 1
        return (word, arguments[index - 1])
    }
}

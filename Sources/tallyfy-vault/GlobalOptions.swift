import ArgumentParser
import Foundation
import TallyfyVault

/// The options every command takes, each also read from its variable.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The sealed vault file (TALLYFY_VAULT_FILE).", valueName: "PATH"))
    var vault: String?

    @Option(name: .long, help: ArgumentHelp("Which credential set (TALLYFY_VAULT_PROFILE). Default: default.", valueName: "NAME"))
    var profile: String?

    @Option(name: .long, help: ArgumentHelp("Unlock with a key file (TALLYFY_VAULT_KEY_FILE).", valueName: "PATH"))
    var keyFile: String?

    @Option(name: .long, help: ArgumentHelp("Unlock with the first line of a file (TALLYFY_VAULT_PASSPHRASE_FILE).", valueName: "PATH"))
    var passphraseFile: String?

    var context: CommandContext {
        CommandContext(vault: vault, profile: profile, keyFile: keyFile, passphraseFile: passphraseFile)
    }

    var environment: [String: String] { context.environment }
    var vaultPath: String { context.vaultPath }
    var profileName: String { context.profileName }
    var explicitProfile: String? { context.explicitProfile }
    var store: VaultStore { context.store }
    var sources: UnlockSources { context.sources }
    func secretsToOpen() throws -> [UnlockSecret] { try context.secretsToOpen() }
    func broker() throws -> TokenBroker { try context.broker() }
}

/// The global settings as plain values, whichever parser found them: the
/// `exec` fast path builds one by hand, every other command through
/// `GlobalOptions`. Options win over their variables.
struct CommandContext {
    var vault: String?
    var profile: String?
    var keyFile: String?
    var passphraseFile: String?
    var environment: [String: String] = ProcessInfo.processInfo.environment

    var vaultPath: String {
        vault ?? nonEmpty("TALLYFY_VAULT_FILE") ?? VaultStore.defaultPath(environment: environment)
    }

    var profileName: String { explicitProfile ?? "default" }

    /// The profile when one was named (flag or variable), for commands that
    /// otherwise cover every profile.
    var explicitProfile: String? { profile ?? nonEmpty("TALLYFY_VAULT_PROFILE") }

    var store: VaultStore {
        VaultStore(path: vaultPath, lockTimeout: VaultStore.lockTimeout(environment: environment))
    }

    var sources: UnlockSources {
        UnlockSources(
            keyFile: keyFile ?? nonEmpty("TALLYFY_VAULT_KEY_FILE"),
            passphraseFile: passphraseFile ?? nonEmpty("TALLYFY_VAULT_PASSPHRASE_FILE"),
            environment: environment)
    }

    /// The secrets to open the vault, after turning off core dumps. Missing
    /// vaults are reported before anyone is prompted for a passphrase.
    func secretsToOpen() throws -> [UnlockSecret] {
        ProcessHardening.protect()
        try store.checkAccess()
        return try sources.secretsToOpen()
    }

    func broker() throws -> TokenBroker {
        TokenBroker(store: store, secrets: try secretsToOpen(), environment: environment)
    }

    private func nonEmpty(_ name: String) -> String? {
        environment[name].flatMap { $0.isEmpty ? nil : $0 }
    }
}

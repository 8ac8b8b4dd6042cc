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

    @Option(name: .long, help: ArgumentHelp("""
        Unlock with a key on a PKCS#11 token, named by an RFC 7512 URI such as pkcs11:token=ops;object=vault \
        (TALLYFY_VAULT_PKCS11_URI). The module: TALLYFY_VAULT_PKCS11_MODULE, else p11-kit's proxy; \
        the PIN: the first line of TALLYFY_VAULT_PKCS11_PIN_FILE, else a prompt.
        """, valueName: "URI"))
    var pkcs11: String?

    @Flag(help: ArgumentHelp("""
        Accept, once, a vault older than one this machine has seen (restored on purpose from a backup), \
        with a warning (TALLYFY_VAULT_ACCEPT_ROLLBACK=1). Without it such a vault is refused (65).
        """))
    var acceptRollback = false

    var context: CommandContext {
        var context = CommandContext(vault: vault, profile: profile, keyFile: keyFile, passphraseFile: passphraseFile, pkcs11: pkcs11)
        context.remote = EtcdClient.connector  // --vault etcd://…
        if acceptRollback { context.environment[SeenGenerations.acceptVariable] = "1" }
        return context
    }

    var profileName: String { context.profileName }
    var store: VaultStore { context.store }
    var sources: UnlockSources { context.sources }
    func secretsToOpen() async throws -> [UnlockSecret] { try await context.secretsToOpen() }
    func broker() async throws -> TokenBroker { try await context.broker() }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The global settings of a command as plain values, whichever parser found
/// them: the `tallyfy-vault` launcher's `exec` fast path builds one by hand,
/// the CLI through ArgumentParser. Options win over their variables.
package struct CommandContext: Sendable {
    package var vault: String?
    package var profile: String?
    package var keyFile: String?
    package var passphraseFile: String?
    /// `--pkcs11 URI`: unlock with a key on a PKCS#11 token.
    package var pkcs11: String?
    package var environment: [String: String]
    /// How this program reaches a vault in etcd; `nil` in the launcher.
    package var remote: RemoteConnector?

    package var vaultPath: String {
        vault ?? nonEmpty("TALLYFY_VAULT_FILE") ?? VaultStore.defaultPath(environment: environment)
    }

    package var profileName: String { explicitProfile ?? "default" }

    /// The profile when one was named (flag or variable), for commands that
    /// otherwise cover every profile.
    package var explicitProfile: String? { profile ?? nonEmpty("TALLYFY_VAULT_PROFILE") }

    /// The vault, with its audit trail naming this command's profile.
    package var store: VaultStore {
        var store = VaultStore(path: vaultPath, lockTimeout: VaultStore.lockTimeout(environment: environment), environment: environment,
            remote: remote)
        store.audit.profile = profileName
        return store
    }

    package var sources: UnlockSources {
        UnlockSources(
            keyFile: keyFile ?? nonEmpty("TALLYFY_VAULT_KEY_FILE"),
            passphraseFile: passphraseFile ?? nonEmpty("TALLYFY_VAULT_PASSPHRASE_FILE"),
            environment: environment,
            keyFileSource: keyFile != nil ? "--key-file" : "TALLYFY_VAULT_KEY_FILE",
            pkcs11: pkcs11 ?? nonEmpty(UnlockSources.pkcs11Variable))
    }

    /// The secrets to open the vault, after turning off core dumps. Missing
    /// vaults are reported before anyone is prompted for a passphrase.
    package func secretsToOpen() async throws -> [UnlockSecret] {
        ProcessHardening.protect()
        try await store.checkAccess()
        let available = try sources.available(promptForPIN: true)
        if !available.isEmpty { return available }
        return [try await typedPassphrase()]
    }

    /// The passphrase typed at the terminal, with three tries as sudo and
    /// ssh give. Each try is checked against the vault's passphrase slots at
    /// the slots' own Argon2id cost, the same for every try; the slot key it
    /// derived stays with the secret (`UnlockSecret.derivedKey`), so opening
    /// the vault with it derives nothing more. After the last wrong try the
    /// command goes on and fails as before (77, "wrong passphrase or key").
    func typedPassphrase(tries: Int = 3) async throws -> UnlockSecret {
        let slots = try await store.parsed(readSummary: false).slots.filter { $0.kind == .passphrase }
        var attempt = 1
        while true {
            let secret = try TerminalPrompt.passphrase(prompt: "Vault passphrase: ", confirm: false)
            if slots.isEmpty || attempt >= tries { return secret }
            for slot in slots {
                if try slot.unwrap(with: secret) != nil { return secret }
            }
            TerminalPrompt.tell("wrong passphrase, try again (\(tries - attempt) \(tries - attempt == 1 ? "try" : "tries") left)")
            attempt += 1
        }
    }

    /// The token request that `exec`, `export` and `token` options describe:
    /// `--user`, `--min-ttl` (else `TALLYFY_VAULT_MIN_TTL`, else 1h), `--no-refresh`.
    package func tokenRequest(user: String?, minimumLifetime: String?, noRefresh: Bool, strict: Bool = false) throws -> TokenRequest {
        TokenRequest(
            profile: profileName, user: user,
            minimumLifetime: try TokenPolicy.minimumLifetime(option: minimumLifetime, environment: environment),
            renewal: noRefresh ? .never : strict ? .whenStaleStrictly : .whenStale)
    }

    /// One command's pass over the vault: read once, then the secrets to
    /// open it (after the read, so a missing or unsafe vault is reported
    /// before anyone is prompted), then opened once. The broker decides on
    /// this vault and reads it again only under the lock, to renew.
    package func pass(secrets: () async throws -> [UnlockSecret]) async throws -> (TokenBroker, UnlockedVault) {
        ProcessHardening.protect()
        let read = try await store.read()
        let broker = TokenBroker(store: store, secrets: try await secrets(), environment: environment)
        return (broker, try await broker.open(read))
    }

    package func broker() async throws -> TokenBroker {
        TokenBroker(store: store, secrets: try await secretsToOpen(), environment: environment)
    }

    package init(
        vault: String? = nil, profile: String? = nil, keyFile: String? = nil, passphraseFile: String? = nil,
        pkcs11: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment
    ) {
        self.vault = vault
        self.profile = profile
        self.keyFile = keyFile
        self.passphraseFile = passphraseFile
        self.pkcs11 = pkcs11
        self.environment = environment
    }

    private func nonEmpty(_ name: String) -> String? {
        environment[name].flatMap { $0.isEmpty ? nil : $0 }
    }
}

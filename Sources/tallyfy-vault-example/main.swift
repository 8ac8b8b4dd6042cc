// A Swift server app that links TallyfyVault instead of shelling out. It asks
// a running `tallyfy-vault agent` first (then this process holds no key at
// all), else opens the vault with the usual unlock sources, and wants an
// application token with at least an hour left. A refresh, if one is needed,
// is sealed and single-flight exactly as with `tallyfy-vault exec`.
import Foundation
import TallyfyVault

let environment = ProcessInfo.processInfo.environment
let vaultPath = environment["TALLYFY_VAULT_FILE"] ?? VaultStore.defaultPath(environment: environment)
let source = TokenSource.agentFirst(
    AgentClient(environment: environment, disabled: false), vaultPath: vaultPath,
    else: .reopening {
        let sources = UnlockSources(
            keyFile: environment["TALLYFY_VAULT_KEY_FILE"], passphraseFile: nil, environment: environment)
        return TokenBroker(store: VaultStore(location: vaultPath), secrets: try sources.secretsToOpen())
    })

do {
    let grant = try await source.grant(TokenRequest(profile: "default", minimumLifetime: 3600))
    print("organization \(grant.orgID), token valid until \(grant.expiresAt)")
    // Use grant.token as "Authorization: Bearer …" with grant.apiURL.
} catch let error as VaultError {
    FileHandle.standardError.write(Data("example: \(error.message)\n".utf8))
    exit(error.exitStatus)
}

// A Swift program that links TallyfyVault instead of shelling out: it opens
// the vault with the usual unlock sources and asks for an application token
// with at least an hour left. The refresh, if one is needed, is sealed and
// single-flight exactly as with `tallyfy-vault exec`.
import Foundation
import TallyfyVault

let environment = ProcessInfo.processInfo.environment
let store = VaultStore(path: environment["TALLYFY_VAULT_FILE"] ?? VaultStore.defaultPath(environment: environment))
let sources = UnlockSources(
    keyFile: environment["TALLYFY_VAULT_KEY_FILE"], passphraseFile: nil, environment: environment)

do {
    let broker = TokenBroker(store: store, secrets: try sources.secretsToOpen())
    let grant = try await broker.grant(TokenRequest(profile: "default", minimumLifetime: 3600))
    print("organization \(grant.orgID), token valid until \(grant.expiresAt)")
    // Use grant.token as "Authorization: Bearer …" with grant.apiURL.
} catch let error as VaultError {
    FileHandle.standardError.write(Data("example: \(error.message)\n".utf8))
    exit(error.exitStatus)
}

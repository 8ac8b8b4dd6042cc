import Foundation
import TallyfyVaultCore

/// Lets a store keep its vault in etcd (`--vault etcd://…`).
///
/// The client speaks etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
/// `/v3/lease/*`) over AsyncHTTPClient, which this module already uses for
/// Tallyfy: no generated gRPC code, no second HTTP/2 stack, and every call is
/// one small JSON request a person can reproduce with `curl` (README, "Many
/// machines: a vault on etcd").
package enum EtcdClient {
    /// What a program with this module gives its stores
    /// (`VaultStore(path:lockTimeout:environment:remote:)`,
    /// `CommandContext.remote`): each location's vault on this process's one
    /// gateway to its cluster.
    package static let connector: RemoteConnector = { location in try EtcdVault(location: location) }

    /// Shuts down the HTTP clients etcd vaults of this process used (none
    /// made: nothing to do), before the program ends.
    package static func shutDown() async { await EtcdGateway.shutDownAll() }
}

extension VaultStore {
    /// The vault at `location`: a file path, or an etcd cluster
    /// (`etcd://HOST:PORT[,HOST:PORT…]/PREFIX`, `etcds://…` with the
    /// `TALLYFY_VAULT_ETCD_*` variables of this process's environment).
    /// `VaultStore(path:)` reaches files only (and an etcd vault's copy in
    /// this machine's cache).
    public init(location: String, lockTimeout: Duration = VaultStore.defaultLockTimeout) {
        self.init(path: location, lockTimeout: lockTimeout, environment: ProcessInfo.processInfo.environment,
            remote: EtcdClient.connector)
    }
}

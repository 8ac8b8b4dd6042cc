import TallyfyVaultCore

/// Lets this process keep vaults in etcd (`--vault etcd://…`).
///
/// The client speaks etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
/// `/v3/lease/*`) over AsyncHTTPClient, which this module already uses for
/// Tallyfy: no generated gRPC code, no second HTTP/2 stack, and every call is
/// one small JSON request a person can reproduce with `curl` (README, "Many
/// machines: a vault on etcd").
package enum EtcdClient {
    /// Installs the etcd client for every `VaultStore` in this process. The
    /// CLI calls it at start; a Swift program that imports `TallyfyVault`
    /// calls it once before using an etcd location.
    package static func install() {
        RemoteLocations.install { location in try EtcdVault(location: location) }
    }
}

import Foundation
import NIOCore
import TallyfyVaultCore

/// The fleet-wide lock: a key attached to a lease that is kept alive while
/// held, so a holder that dies frees it within the lease's TTL.
final class EtcdLock: RemoteLock, @unchecked Sendable {
    let vault: EtcdVault
    let lease: String
    let owner: String
    private let keepAlive: RepeatedTask?
    private let loop: any EventLoop

    init(vault: EtcdVault, lease: String, owner: String) {
        self.vault = vault
        self.lease = lease
        self.owner = owner
        let gateway = vault.gateway
        let every = TimeAmount.seconds(Int64(EtcdVault.lockTTL / 3))
        loop = gateway.http.eventLoopGroup.next()
        keepAlive = loop.scheduleRepeatedTask(initialDelay: every, delay: every) { _ in
            // To every member: one that hangs (paused, cut off) must not
            // cost the lease while the others would have kept it.
            gateway.sendToEveryMember("/v3/lease/keepalive", ["ID": lease])
        }
    }

    func release() async {
        // Waits until the loop has dropped the task (and the gateway it
        // holds): a keep-alive can't run after release, and nothing of this
        // lock outlives it (LeakSanitizer found the task still held after
        // a plain cancel, with the gateway, in the etcd fuzz target).
        let cancelled = loop.makePromise(of: Void.self)
        keepAlive?.cancel(promise: cancelled)
        try? await cancelled.futureResult.get()
        let gateway = vault.gateway
        _ = try? await gateway.call("/v3/kv/txn", [
            "compare": [["key": b64(vault.lockKey), "target": "VALUE", "result": "EQUAL", "value": b64(owner)]],
            "success": [["request_delete_range": ["key": b64(vault.lockKey)]]],
            "failure": [] as [Any],
        ])
        gateway.send("/v3/lease/revoke", ["ID": lease])
    }
}

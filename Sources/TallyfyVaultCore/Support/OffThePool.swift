/// Runs `body`, which blocks (a request to etcd, the wait for its lock), on a
/// thread of its own and awaits it. Swift's shared pool has one thread per
/// core: on two cores an agent whose renewal waited for the fleet's lock on
/// one and whose watch read the cluster on the other had none left for
/// anything else. The file store needs none of this: its lock waits with
/// `Task.sleep`, and a file read is quick.
package func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DetachedThread.start { continuation.resume(with: Result { try body() }) }
    }
}

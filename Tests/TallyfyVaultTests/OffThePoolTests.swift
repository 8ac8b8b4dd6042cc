import Foundation
import Synchronization
import Testing

@testable import TallyfyVaultCore

struct OffThePoolTests {
    /// Eight blocking bodies at once, each waiting until all eight have
    /// started: on the shared pool (one thread per core) only as many as the
    /// machine has cores could run, and the rest would never start while
    /// those wait. Off the pool, all eight run together.
    @Test func blockingBodiesDoNotHoldThePoolsThreads() async throws {
        let count = max(8, ProcessInfo.processInfo.activeProcessorCount * 4)
        let started = Arrivals()
        let allStarted = try await withThrowingTaskGroup(of: Bool.self) { group in
            for _ in 0..<count {
                group.addTask {
                    try await offThePool {
                        started.count.withLock { $0 += 1 }
                        let deadline = Date().addingTimeInterval(20)
                        while started.now < count, Date() < deadline { usleep(1_000) }
                        return started.now == count
                    }
                }
            }
            return try await group.allSatisfy { $0 }
        }
        #expect(allStarted, "only \(started.now) of \(count) bodies ran at once")
    }

    @Test func anErrorComesBackToTheCaller() async {
        await #expect(throws: VaultError.self) {
            try await offThePool { () throws -> Int in throw VaultError(.unavailable, "etcd is away") }
        }
    }
}

/// How many bodies have started.
private final class Arrivals: Sendable {
    let count = Mutex(0)
    var now: Int { count.withLock { $0 } }
}

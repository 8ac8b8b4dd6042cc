import Foundation
import Synchronization

/// Debug builds only (the test suite's): a gate that holds a write just
/// before its etcd transaction, so a test can kill the cluster's leader at
/// exactly that moment instead of hoping to hit it with a timer; and answers
/// of applied transactions dropped, as a connection cut by a leader change
/// drops them.
enum TestHooks {
    private static let answersLost = Mutex<Set<Data>>([])

    /// With `TALLYFY_VAULT_TEST_LOSE_TXN_ANSWERS=N`, the answers to the first
    /// N different transactions etcd applied are dropped, once each, and the
    /// gateway goes on as if the member had never answered: it sends the same
    /// transaction again, and that answer arrives. (In a write, the first is
    /// the lock's, the second the commit's.)
    static func loseAnswer(_ path: String, _ body: Data) -> Bool {
        #if TALLYFY_TEST_HOOKS
            guard path == "/v3/kv/txn", let text = ProcessInfo.processInfo.environment["TALLYFY_VAULT_TEST_LOSE_TXN_ANSWERS"],
                let limit = Int(text)
            else { return false }
            return answersLost.withLock { lost in
                guard lost.count < limit, !lost.contains(body) else { return false }
                lost.insert(body)
                return true
            }
        #else
            return false
        #endif
    }

    /// With `TALLYFY_VAULT_TEST_COMMIT_GATE` naming a FIFO, opens it for
    /// reading (which waits until the test opens it for writing, so the test
    /// knows the write is held here) and reads until the test closes it.
    static func beforeCommit(_ prefix: String) {
        #if TALLYFY_TEST_HOOKS
            guard let gate = ProcessInfo.processInfo.environment["TALLYFY_VAULT_TEST_COMMIT_GATE"], !gate.isEmpty else { return }
            let descriptor = open(gate, O_RDONLY | O_CLOEXEC)
            guard descriptor >= 0 else { return }
            defer { close(descriptor) }
            var byte: UInt8 = 0
            while read(descriptor, &byte, 1) > 0 {}
        #endif
    }
}

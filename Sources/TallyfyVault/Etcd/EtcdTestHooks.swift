import Foundation

/// Debug builds only (the test suite's): a gate that holds a write just
/// before its etcd transaction, so a test can kill the cluster's leader at
/// exactly that moment instead of hoping to hit it with a timer.
enum TestHooks {
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

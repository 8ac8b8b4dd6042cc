import Foundation
import Synchronization
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

/// A call to Tallyfy under the vault lock (`TokenBroker.patiently`): given up
/// in time for another machine, and not begun again at once by a process
/// that has just given up.
@Suite struct PatienceTests {
    let key = TestKeys.keyFile(5)

    /// tools/partition-test: an agent cut from Tallyfy gave up on a client's
    /// renewal after 1.7 s, took the fleet lock again at once for its own
    /// renewal and waited out another second; the machine that could reach
    /// Tallyfy renewed 0.47 s before the 12-second token expired.
    @Test func aProcessThatGaveUpOnTallyfyDoesNotAskAgainAtOnce() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("tv-patience-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let environment = ["HOME": folder, "XDG_STATE_HOME": folder + "/state"]
        let broker = TokenBroker(store: VaultStore(path: folder + "/vault", environment: environment), secrets: [key], environment: environment)
        let vault = try UnlockedVault.create(secret: key, label: "k", kdf: .moderate)
        let now = Date()
        // 6 s left of 16: three seconds' patience (half the life left), so
        // the deferral after giving up outlasts any stall of a loaded machine
        // between the two calls below (with the 1 s floor it did not, once).
        vault.content.profiles["default"] = TestKeys.profile(
            appToken: SealedToken(value: "app", expiresAt: now.addingTimeInterval(6), obtainedAt: now.addingTimeInterval(-10)))
        let asked = Mutex(0)
        let silent: @Sendable () async throws -> Int = {
            asked.withLock { $0 += 1 }
            try await Task.sleep(for: .seconds(30))
            return 0
        }
        let first = try await #require(throws: VaultError.self) {
            try await broker.patiently(in: vault, profile: "default", what: "the token request", silent)
        }
        #expect(first.exitStatus == 69 && first.message.contains("gave up so that another process or machine can renew it"))
        #expect(asked.withLock { $0 } == 1)

        // Right after: given up at once, without asking (a call that asked
        // would wait out its second of patience on `silent`).
        let started = ContinuousClock.now
        let again = try await #require(throws: VaultError.self) {
            try await broker.patiently(in: vault, profile: "default", what: "the token request", silent)
        }
        #expect(asked.withLock { $0 } == 1)
        #expect(again.exitStatus == 69 && again.message.contains("not asking again at once"), "\(again.message)")

        // After as long as it waited, it asks again; an answer ends the deferral.
        var answer: Int?
        while answer == nil, ContinuousClock.now - started < .seconds(10) {
            answer = try? await broker.patiently(in: vault, profile: "default", what: "the token request") {
                asked.withLock { $0 += 1 }
                return 7
            }
            if answer == nil { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(answer == 7)
        #expect(asked.withLock { $0 } == 2)
        #expect(ContinuousClock.now - started >= .milliseconds(2900))
        #expect(TokenPolicy.deferralAfterGivingUp(waited: 1.7) == 1.7)
        #expect(TokenPolicy.deferralAfterGivingUp(waited: 21 * 3600) == TokenPolicy.longestDeferral)
    }
}

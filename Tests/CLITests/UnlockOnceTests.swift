import Foundation
import Testing

/// A process derives the vault key at most once, whatever it does: the
/// launcher decides from the clear summary whether the sealed token will do
/// before spending an Argon2id derivation, and the CLI re-opens the vault
/// under the lock with the key it already holds. Counted through the debug
/// build's `TALLYFY_VAULT_TEST_KDF_LOG` (one line per slot key derivation).
@Suite struct UnlockOnceTests {
    let secret = "cs-\(UUID().uuidString)"

    /// A passphrase vault (no key file), logged in against a fresh emulator.
    private func passphraseVault(userTokenTTL: Int? = nil) async throws -> (Sandbox, Emulator) {
        let emulator = try await Emulator.start(clients: [("client-test", secret)], userTokenTTL: userTokenTTL)
        let sandbox = try Sandbox()
        sandbox.environment["TALLYFY_VAULT_PASSPHRASE_FILE"] = try sandbox.write("pp-\(UUID().uuidString)\n", to: "passphrase")
        try sandbox.ok(["init"])
        try sandbox.storeCredentials(for: emulator, secret: secret)
        try sandbox.ok(["login"])
        return (sandbox, emulator)
    }

    /// Runs `arguments` and returns how many key derivations it made.
    private func derivations(_ sandbox: Sandbox, _ arguments: [String], status: Int32 = 0, env extra: [String: String] = [:],
        sourceLocation: SourceLocation = #_sourceLocation) throws -> [String] {
        let log = sandbox.path("kdf-\(UUID().uuidString)")
        let result = try sandbox.run(arguments, env: extra.merging(["TALLYFY_VAULT_TEST_KDF_LOG": log]) { $1 })
        #expect(result.status == status, "\(arguments.joined(separator: " ")): \(result.brief)", sourceLocation: sourceLocation)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map(String.init)
    }

    @Test func aRefreshingExecDerivesTheKeyOnce() async throws {
        let (sandbox, emulator) = try await passphraseVault()
        defer { _ = emulator.stop() }
        // Fresh: the launcher unlocks once and execs.
        #expect(try derivations(sandbox, ["exec", "--", "true"]) == ["argon2id"])
        #expect(try await emulator.counts()["token"] == 1)
        // A week-long token can't satisfy 8 days: the launcher sees that in
        // the clear summary, hands over without deriving, the CLI derives
        // once, renews under the lock (re-reading with the key it holds) and
        // execs.
        #expect(try derivations(sandbox, ["exec", "--min-ttl", "8d", "--", "true"]) == ["argon2id"])
        #expect(try await emulator.counts()["token"] == 2)
        #expect(try derivations(sandbox, ["token", "--min-ttl", "8d"]) == ["argon2id"])
        #expect(try await emulator.counts()["token"] == 3)
    }

    @Test func checkRefreshOverManyUsersDerivesTheKeyOnce() async throws {
        // User tokens live 30 s, inside every warning window.
        let (sandbox, emulator) = try await passphraseVault(userTokenTTL: 30)
        defer { _ = emulator.stop() }
        let emails = (1...5).map { "user\($0)@example.com" }
        for email in emails {
            try sandbox.ok(["users", "create", "--email", email, "--first-name", "U", "--last-name", "Ser"])
            try sandbox.ok(["users", "token", email])
        }
        let before = try await emulator.counts()["users.token"] ?? 0
        let kdf = try derivations(sandbox, ["check", "--refresh"], status: 2)
        #expect(kdf == ["argon2id"], "check --refresh derived the key \(kdf.count) times")
        // It did renew every user (they are still short-lived, hence CRITICAL).
        #expect(try await emulator.counts()["users.token"] == before + emails.count)
    }

    /// The keyless commands derive nothing.
    @Test func keylessCommandsDeriveNothing() async throws {
        let (sandbox, emulator) = try await passphraseVault()
        defer { _ = emulator.stop() }
        #expect(try derivations(sandbox, ["status"]) == [])
        #expect(try derivations(sandbox, ["keys", "list"]) == [])
        #expect(try derivations(sandbox, ["check"], env: ["TALLYFY_VAULT_PASSPHRASE_FILE": ""]) == [])
    }
}

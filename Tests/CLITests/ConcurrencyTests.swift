import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Many `tallyfy-vault` processes at once on one vault: no lost update,
/// single-flight refresh, a bounded wait for the lock, lock-free readers.
/// The processes really run at the same time (started in the background,
/// not one per test-runner thread).
@Suite struct ConcurrencyTests {
    let secret = "cs-\(UUID().uuidString)"
    let client = "client-test"

    /// A sandbox whose vault holds credentials for a fresh emulator, logged in.
    private func loggedIn(appTokenTTL: Int? = nil, extraSecrets: [String] = []) async throws -> (Sandbox, Emulator) {
        let world = try await LoggedIn.start(secrets: [secret] + extraSecrets, client: client, appTokenTTL: appTokenTTL)
        return (world.sandbox, world.emulator)
    }

    private func tokenWorks(_ token: String, _ emulator: Emulator) async throws -> Bool {
        try await emulator.send(.GET, "/api/organizations/org-test/me",
            headers: ["Authorization": "Bearer \(token)", "X-Tallyfy-Client": "APIClient"]).status == 200
    }

    @Test func twentyWritersAtOnceLoseNoUpdate() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        let emails = (0..<20).map { "user\($0)@example.com" }
        // Provisioned through the emulator's API directly: quicker than 20 runs.
        let applicationToken = try sandbox.ok(["token"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        for (index, email) in emails.enumerated() {
            let body = try JSONSerialization.data(withJSONObject: ["email": email, "first_name": "User", "last_name": "N\(index)"])
            let reply = try await emulator.send(.POST, "/api/applications/org-test/users",
                headers: ["Authorization": "Bearer \(applicationToken)", "X-Tallyfy-Client": "APIClient"], json: body)
            try reply.expect(201)
        }
        try await emulator.reset()

        let writers = try emails.map { try sandbox.launch(["users", "token", $0]) }
        let results = writers.map { $0.wait() }
        #expect(results.allSatisfy { $0.status == 0 }, "\(results.filter { $0.status != 0 }.map(\.brief))")
        #expect(try await emulator.counts()["users.token"] == 20)
        #expect(try await emulator.counts()["token"] == 0, "the fresh application token was renewed")

        let listed = try sandbox.ok(["users", "list"]).stdout
        let rows = listed.split(separator: "\n").dropFirst().map { String($0.split(separator: " ").first ?? "") }
        #expect(Set(rows) == Set(emails), "users list: \(rows)")
        // Every sealed token is the one a writer obtained, and it works.
        var tokens: Set<String> = []
        for email in emails {
            let token = try sandbox.ok(["token", "--user", email, "--no-refresh"]).stdout
                .trimmingCharacters(in: .whitespacesAndNewlines)
            tokens.insert(token)
        }
        #expect(tokens.count == 20)
        #expect(try await tokenWorks(tokens.first ?? "", emulator))
        try sandbox.ok(["credentials", "show"])
        #expect(filesBelow(sandbox.root).filter { $0.lastPathComponent.hasPrefix(".vault.tmp-") }.isEmpty,
            "a temporary file was left behind")
    }

    @Test func fiftyExecsAndARotationMakeAtMostTwoTokenRequests() async throws {
        let newSecret = "cs-new-\(UUID().uuidString)"
        let (sandbox, emulator) = try await loggedIn(appTokenTTL: 1, extraSecrets: [newSecret])
        defer { _ = emulator.stop() }
        sandbox.environment["TALLYFY_VAULT_TEST_NOW"] = "+1h"  // the sealed token has expired
        try sandbox.refused(["token", "--no-refresh"], status: 78)
        try await emulator.setLifetimes(app: 604_800)
        try await emulator.reset()

        var execs: [BackgroundCommand] = []
        for index in 0..<50 {
            execs.append(try sandbox.launch(["exec", "--", "printenv", "TALLYFY_TOKEN"]))
            if index == 10 {
                execs.append(try sandbox.launch(["rotate-secret", "--secret-stdin"], stdin: newSecret))
            }
        }
        let rotation = execs.remove(at: 11).wait()
        let results = execs.map { $0.wait() }
        #expect(rotation.status == 0, "rotate-secret: \(rotation.brief)")
        #expect(results.allSatisfy { $0.status == 0 }, "\(results.filter { $0.status != 0 }.map(\.brief))")
        let requests = try await emulator.counts()["token"] ?? -1
        #expect(requests >= 1 && requests <= 2, "\(requests) token requests")

        let handedOut = Set(results.map { $0.stdout.trimmingCharacters(in: .whitespacesAndNewlines) })
        #expect(!handedOut.contains(""), "a child got no token")
        #expect(handedOut.count <= 2, "\(handedOut.count) different tokens for one refresh and one rotation")
        // The API refuses the expired token: each one handed out is a renewed one.
        for token in handedOut {
            #expect(try await tokenWorks(token, emulator), "a child got a token the API refuses")
        }

        // The vault is whole, its token works, and the rotation took: with
        // only the new secret accepted from now on, a login still succeeds.
        let sealed = try sandbox.ok(["token", "--no-refresh"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try await tokenWorks(sealed, emulator))
        try await emulator.setSecrets(client: client, secrets: [newSecret])
        try sandbox.ok(["login"])
    }

    @Test func aLockHeldTooLongGives75AndReadersStillRead() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        try sandbox.ok(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"])
        try sandbox.ok(["users", "token", "ann@example.com"])
        let token = try sandbox.ok(["token"]).stdout
        try await emulator.reset()
        let wait = ["TALLYFY_VAULT_LOCK_TIMEOUT": "1"]

        let lock = try VaultLockHolder(vaultPath: sandbox.vaultPath)
        let started = Date()
        let forget = try sandbox.refused(["users", "forget", "ann@example.com"], status: 75, env: wait)
        #expect(Date().timeIntervalSince(started) >= 0.9, "gave up before the timeout")
        #expect(forget.stderr.contains("locked"), "\(forget.stderr)")
        // A refresh (8 days wanted of a 7-day token) waits for the lock too,
        // and asks Tallyfy nothing while it can't seal the answer; strictly,
        // that fails; by default the still-valid sealed token is used.
        try sandbox.refused(["token", "--strict-ttl", "--min-ttl", "8d"], status: 75, env: wait)
        let degraded = try sandbox.ok(["token", "--min-ttl", "8d"], env: wait)
        #expect(degraded.stdout == token && degraded.stderr.contains("warning: could not renew"), "\(degraded.stderr)")
        try sandbox.refused(["login"], status: 75, env: wait)
        #expect(try await emulator.counts()["token"] == 0)
        // Readers take no lock.
        #expect(try sandbox.ok(["token", "--no-refresh"]).stdout == token)
        try sandbox.ok(["exec", "--", "true"])
        #expect(try sandbox.ok(["users", "list"]).stdout.contains("ann@example.com"))
        try sandbox.ok(["credentials", "show"])

        // A writer that starts while the lock is held goes on once it is released.
        let waiting = try sandbox.launch(["users", "forget", "ann@example.com"], env: ["TALLYFY_VAULT_LOCK_TIMEOUT": "20"])
        #expect(ProcView.waitUntil(seconds: 20) { ProcView.hasOpen(pid: waiting.pid, path: sandbox.vaultPath + ".lock") },
            "the writer did not wait for the lock")
        #expect(waiting.isRunning, "the writer did not wait for the lock")
        lock.release()
        let released = waiting.wait()
        #expect(released.status == 0, "\(released.brief)")
        #expect(!(try sandbox.ok(["users", "list"]).stdout.contains("ann@example.com")))
    }
}

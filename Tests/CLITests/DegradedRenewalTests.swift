import Foundation
import Testing

/// A short Tallyfy outage never stops a job whose sealed token is still
/// valid: `exec`, `token` and `export` use it with one warning line, `check`
/// reports the failed renewal until one succeeds, and `--strict-ttl` keeps
/// the hard failure.
@Suite struct DegradedRenewalTests {
    let secret = "cs-\(UUID().uuidString)"

    private func loggedIn() async throws -> (Sandbox, Emulator) {
        let world = try await LoggedIn.start(secrets: [secret])
        return (world.sandbox, world.emulator)
    }

    private func warningLines(_ stderr: String) -> [String] {
        stderr.split(separator: "\n").map(String.init)
    }

    @Test func a503WhileTheTokenIsValidUsesTheSealedTokenWithOneWarning() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        let sealed = try sandbox.ok(["token"]).stdout
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "status", status: 503))
        // A 7-day token never satisfies 8 days, so each of these tries to renew.
        for arguments in [["exec", "--min-ttl", "8d", "--", "printenv", "TALLYFY_TOKEN"], ["token", "--min-ttl", "8d"]] {
            let result = try sandbox.ok(arguments)
            #expect(result.stdout == sealed, "\(arguments.first!) did not hand out the sealed token")
            let lines = warningLines(result.stderr)
            #expect(lines.count == 1, "\(result.stderr)")
            #expect(lines.first?.hasPrefix("tallyfy-vault: warning: could not renew the application token for profile \"default\" (") == true,
                "\(result.stderr)")
            #expect(lines.first?.contains("; using the sealed one, valid until 20") == true, "\(result.stderr)")
        }
        let export = try sandbox.ok(["export", "--min-ttl", "8d"])
        #expect(export.stdout.contains("TALLYFY_TOKEN="), "\(export.brief)")
        #expect(warningLines(export.stderr).count == 1)

        // check reports the failed renewal (WARNING) until one succeeds.
        let check = try sandbox.run(["check"])
        #expect(check.status == 1, "\(check.brief)")
        #expect(check.stdout.contains("profile default: the last renewal failed at "), "\(check.stdout)")
        // The clear summary records the kind of failure, never the message that names Tallyfy's host.
        let host = try #require(URL(string: emulator.apiURL).flatMap { url in url.port.map { "\(url.host ?? ""):\($0)" } })
        #expect(!check.stdout.contains(host), "\(check.stdout)")
        #expect(try sandbox.vaultBytes().range(of: Data(host.utf8)) == nil, "the vault's clear part names \(host)")

        // --strict-ttl: the hard failure, and nothing written.
        try sandbox.refused(["exec", "--strict-ttl", "--min-ttl", "8d", "--", "true"], status: 69)
        try sandbox.refused(["token", "--strict-ttl", "--min-ttl", "8d"], status: 69)

        try await emulator.clearFaults()
        let renewed = try sandbox.ok(["token", "--min-ttl", "8d"])
        #expect(renewed.stdout != sealed && renewed.stderr.isEmpty, "\(renewed.brief)")
        let after = try sandbox.run(["check"])
        #expect(after.status == 0 && after.stdout.isEmpty, "\(after.brief) \(after.stdout)")
    }

    @Test func anUnreachableTallyfyIsRiddenOutToo() async throws {
        let (sandbox, emulator) = try await loggedIn()
        let sealed = try sandbox.ok(["token"]).stdout
        _ = emulator.stop()
        let result = try sandbox.ok(["token", "--min-ttl", "8d"])
        #expect(result.stdout == sealed)
        #expect(result.stderr.hasPrefix("tallyfy-vault: warning: could not renew"), "\(result.stderr)")
    }

    /// A refused secret means someone must act: no fallback.
    @Test func aRefusedSecretIsNotRiddenOut() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        try await emulator.setSecrets(client: "client-test", secrets: ["cs-other-\(UUID().uuidString)"])
        try sandbox.refused(["token", "--min-ttl", "8d"], status: 77)
    }

    /// A token with less than a minute left is not handed out on a failure.
    @Test func aTokenAboutToExpireIsNotHandedOut() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        let json = try sandbox.ok(["token", "--format", "json"]).stdout
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let expiresText = try #require(object["expiresAt"] as? String)
        let expiresAt = try #require(ISO8601DateFormatter().date(from: expiresText))
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "status", status: 503))
        let clock = ["TALLYFY_VAULT_TEST_NOW": String(Int(expiresAt.timeIntervalSince1970) - 30)]
        try sandbox.refused(["token"], status: 69, env: clock)
        // Two minutes left: used, with the warning.
        let later = ["TALLYFY_VAULT_TEST_NOW": String(Int(expiresAt.timeIntervalSince1970) - 120)]
        let result = try sandbox.ok(["token"], env: later)
        #expect(result.stderr.contains("warning: could not renew"), "\(result.stderr)")
    }
}

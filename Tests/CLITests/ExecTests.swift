import Foundation
import Testing

/// `exec` and `export` end to end: the real binary, the real emulator.
/// Every test runs on a vault file and on a vault on etcd.
@Suite struct ExecTests {
    let secret = "cs-\(UUID().uuidString)"

    /// A sandbox whose vault holds credentials for a fresh emulator, logged in.
    private func loggedIn(_ vault: VaultKind, appTokenTTL: Int? = nil) async throws -> (Sandbox, Emulator) {
        let world = try await LoggedIn.start(secrets: [secret], appTokenTTL: appTokenTTL, vault: vault)
        return (world.sandbox, world.emulator)
    }

    private func lines(_ text: String) -> [String] {
        text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty }
    }

    @Test(arguments: VaultKind.allCases) func argumentsPassThroughExactly(_ vault: VaultKind) async throws {
        let (sandbox, emulator) = try await loggedIn(vault)
        defer { _ = emulator.stop() }
        let odd = ["a b", "", "$HOME", "--flag", "-x", "--", "it's", "*", "new\nline", "--help"]
        let result = try sandbox.ok(["exec", "--", "/bin/sh", "-c", "for a; do printf '[%s]\\n' \"$a\"; done", "sh"] + odd)
        #expect(result.stdout == odd.map { "[\($0)]\n" }.joined())
    }

    /// A plain `exec` is recognised without ArgumentParser (for speed); every
    /// other spelling goes through ArgumentParser. Both must behave alike.
    @Test(arguments: VaultKind.allCases) func theFastPathAndArgumentParserAgree(_ vault: VaultKind) async throws {
        let (sandbox, emulator) = try await loggedIn(vault)
        defer { _ = emulator.stop() }
        let expected = try sandbox.ok(["exec", "--", "printenv", "TALLYFY_TOKEN"]).stdout
        let spellings: [[String]] = [
            ["--vault", sandbox.vaultLocation, "exec", "--min-ttl", "1m", "--", "printenv", "TALLYFY_TOKEN"],
            ["exec", "--vault=\(sandbox.vaultLocation)", "--min-ttl=1m", "--no-refresh", "--", "printenv", "TALLYFY_TOKEN"],
            ["exec", "--profile", "default", "--key-file", sandbox.keyPath, "--", "printenv", "TALLYFY_TOKEN"],
        ]
        for arguments in spellings {
            #expect(try sandbox.ok(arguments).stdout == expected, "\(arguments)")
        }
        // Not the fast path's grammar: ArgumentParser answers.
        let unknown = try sandbox.run(["exec", "--bogus", "--", "true"])
        #expect(unknown.status == 64 && unknown.stderr.contains("Unknown option '--bogus'"), "\(unknown.brief)")
        let help = try sandbox.run(["exec", "--help"])
        #expect(help.status == 0 && help.stdout.contains("USAGE"), "\(help.brief)")
        let badTTL = try sandbox.run(["exec", "--min-ttl", "soon", "--", "true"])
        #expect(badTTL.status == 64 && badTTL.stderr.contains("is not a duration"), "\(badTTL.brief)")
    }

    @Test(arguments: VaultKind.allCases) func theChildsStatusIsTheStatus(_ vault: VaultKind) async throws {
        let (sandbox, emulator) = try await loggedIn(vault)
        defer { _ = emulator.stop() }
        #expect(try sandbox.run(["exec", "--", "true"]).status == 0)
        #expect(try sandbox.run(["exec", "--", "sh", "-c", "exit 42"]).status == 42)
        let missing = try sandbox.run(["exec", "--", "no-such-command-\(UUID().uuidString)"])
        #expect(missing.status == 127, "\(missing.brief)")
        #expect(missing.stderr.contains("command not found"))
        let script = try sandbox.write("#!/bin/sh\necho hi\n", to: "not-executable", mode: 0o600)
        let notExecutable = try sandbox.run(["exec", "--", script])
        #expect(notExecutable.status == 126, "\(notExecutable.brief)")
        let noCommand = try sandbox.run(["exec"])
        #expect(noCommand.status == 64, "\(noCommand.brief)")
    }

    @Test(arguments: VaultKind.allCases) func theChildKeepsThePid(_ vault: VaultKind) async throws {
        let (sandbox, emulator) = try await loggedIn(vault)
        defer { _ = emulator.stop() }
        let result = try sandbox.ok(["exec", "--", "sh", "-c", "echo $$"])
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == String(result.pid))
    }

    @Test(arguments: VaultKind.allCases) func theChildGetsEveryVariableAndNoUnlockMaterial(_ vault: VaultKind) async throws {
        let (sandbox, emulator) = try await loggedIn(vault)
        defer { _ = emulator.stop() }
        let passphrase = "pp-\(UUID().uuidString)"
        let passFile = try sandbox.write(passphrase + "\n", to: "pass")
        try sandbox.ok(["keys", "add", "--new-passphrase-file", passFile])
        let token = try JSONSerialization.jsonObject(with: Data(try sandbox.ok(["token", "--format", "json"]).stdout.utf8)) as! [String: Any]
        let result = try sandbox.ok(["exec", "--", "env"], env: [
            "TALLYFY_VAULT_KEY_FILE": "", "TALLYFY_VAULT_PASSPHRASE": passphrase, "TALLYFY_TOKEN": "stale", "TALLYFY_ORG_ID": "stale",
        ])
        var child: [String: String] = [:]
        for line in lines(result.stdout) {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { child[parts[0]] = parts[1] }
        }
        #expect(child["TALLYFY_TOKEN"] == token["token"] as? String)
        #expect(child["TALLYFY_API_TOKEN"] == token["token"] as? String)
        #expect(child["TALLYFY_ORG_ID"] == "org-test")
        #expect(child["TALLYFY_API_URL"] == emulator.apiURL)
        // What Tallyfy's CLI (TALLYFY_BASE_URL) and MCP server (TALLYFY_API_BASE_URL) read.
        #expect(child["TALLYFY_BASE_URL"] == emulator.apiURL)
        #expect(child["TALLYFY_API_BASE_URL"] == emulator.apiURL)
        #expect(child["TALLYFY_TOKEN_EXPIRES_AT"] == token["expiresAt"] as? String)
        #expect(child["TALLYFY_VAULT_EXEC"] == "default")
        #expect(child["TALLYFY_VAULT_PASSPHRASE"] == nil)
        #expect(!result.stdout.contains(passphrase))
        #expect(!result.stdout.contains(secret))
        // The token really works against the API.
        let me = try await emulator.send(.GET, "/api/organizations/org-test/me",
            headers: ["Authorization": "Bearer \(child["TALLYFY_TOKEN"] ?? "")", "X-Tallyfy-Client": "APIClient"])
        #expect(me.status == 200)
    }

    @Test(arguments: VaultKind.allCases) func nestedExecIsRefused(_ vault: VaultKind) async throws {
        let (sandbox, emulator) = try await loggedIn(vault)
        defer { _ = emulator.stop() }
        let result = try sandbox.run(["exec", "--", BuildProducts.vault.path, "exec", "--", "true"])
        #expect(result.status == 64, "\(result.brief)")
        #expect(result.stderr.contains("already running under `tallyfy-vault exec`"))
    }

    @Test(arguments: VaultKind.allCases) func aTokenTooCloseToExpiryIsRenewedAndSealed(_ vault: VaultKind) async throws {
        // 10-minute tokens: the renewed one stays fresh for `--min-ttl 1m`
        // however slowly a loaded machine runs the steps between.
        let (sandbox, emulator) = try await loggedIn(vault, appTokenTTL: 600)
        defer { _ = emulator.stop() }
        let before = try sandbox.vaultBytes()
        let first = try sandbox.ok(["exec", "--min-ttl", "1m", "--", "printenv", "TALLYFY_TOKEN"]).stdout
        #expect(try await emulator.counts()["token"] == 1, "a fresh token was renewed")
        #expect(try sandbox.vaultBytes() == before, "the fast path wrote to the vault")
        let renewed = try sandbox.ok(["exec", "--min-ttl", "15m", "--", "printenv", "TALLYFY_TOKEN"]).stdout
        #expect(try await emulator.counts()["token"] == 2)
        #expect(renewed != first)
        // Sealed: the next fast-path call hands out the renewed token.
        #expect(try sandbox.ok(["exec", "--min-ttl", "1m", "--", "printenv", "TALLYFY_TOKEN"]).stdout == renewed)
    }

    @Test(arguments: VaultKind.allCases) func noRefreshWithAnExpiredTokenIs78(_ vault: VaultKind) async throws {
        let (sandbox, emulator) = try await loggedIn(vault, appTokenTTL: 1)
        defer { _ = emulator.stop() }
        // The vault's clock an hour on: the 1-second token has expired.
        sandbox.environment["TALLYFY_VAULT_TEST_NOW"] = "+1h"
        let result = try sandbox.refused(["exec", "--no-refresh", "--", "true"], status: 78)
        #expect(result.stderr.contains("--no-refresh"))
        #expect(try await emulator.counts()["token"] == 1)
    }

    @Test(arguments: VaultKind.allCases) func userTokensAreHandedOutAndRenewedThroughTheApplicationToken(_ vault: VaultKind) async throws {
        let (sandbox, emulator) = try await loggedIn(vault)
        defer { _ = emulator.stop() }
        try sandbox.ok(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"])
        let result = try sandbox.ok(["exec", "--user", "ann@example.com", "--", "printenv", "TALLYFY_TOKEN"])
        let token = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let me = try await emulator.send(.GET, "/api/organizations/org-test/me",
            headers: ["Authorization": "Bearer \(token)", "X-Tallyfy-Client": "APIClient"])
        #expect(me.json["email"] as? String == "ann@example.com")
        #expect(try await emulator.counts()["users.token"] == 1)
        // Sealed: the second exec costs no request.
        #expect(try sandbox.ok(["exec", "--user", "ann@example.com", "--", "printenv", "TALLYFY_TOKEN"]).stdout == result.stdout)
        #expect(try await emulator.counts()["users.token"] == 1)
    }

    @Test(arguments: VaultKind.allCases) func fiftyConcurrentExecsMakeOneTokenRequest(_ vault: VaultKind) async throws {
        let (sandbox, emulator) = try await loggedIn(vault, appTokenTTL: 1)
        defer { _ = emulator.stop() }
        sandbox.environment["TALLYFY_VAULT_TEST_NOW"] = "+1h"  // the sealed token has expired
        try await emulator.setLifetimes(app: 604_800)
        try await emulator.reset()
        let results = try await withThrowingTaskGroup(of: RunResult.self) { group in
            for _ in 0..<50 {
                group.addTask { try sandbox.run(["exec", "--", "printenv", "TALLYFY_TOKEN"]) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.allSatisfy { $0.status == 0 }, "\(results.filter { $0.status != 0 }.map(\.brief))")
        #expect(Set(results.map(\.stdout)).count == 1, "the children got different tokens")
        #expect(try await emulator.counts()["token"] == 1)
    }

    @Test(arguments: VaultKind.allCases) func exportFormatsRoundTrip(_ vault: VaultKind) async throws {
        let (sandbox, emulator) = try await loggedIn(vault)
        defer { _ = emulator.stop() }
        let token = try sandbox.ok(["token"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let sh = try sandbox.ok(["export", "--format", "sh"]).stdout
        let file = try sandbox.write(sh, to: "exported.sh")
        let evaluated = try runProcess(URL(fileURLWithPath: "/bin/sh"),
            ["-c", "eval \"$(cat \"$1\")\"; printf '%s|%s|%s' \"$TALLYFY_TOKEN\" \"$TALLYFY_ORG_ID\" \"$TALLYFY_VAULT_EXEC\"", "sh", file],
            environment: ["PATH": "/usr/bin:/bin"])
        // export does not mark the shell as an exec child (issue 9)
        #expect(evaluated.stdout == "\(token)|org-test|")
        let json = try sandbox.ok(["export", "--format", "json"]).stdout
        let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: String]
        #expect(object?["TALLYFY_TOKEN"] == token)
        #expect(object?["TALLYFY_VAULT_EXEC"] == nil)
        #expect(object?["TALLYFY_BASE_URL"] == object?["TALLYFY_API_URL"])
        #expect(object?["TALLYFY_API_BASE_URL"] == object?["TALLYFY_API_URL"])
        #expect(object?.count == 7)
        let dotenv = try sandbox.ok(["export", "--format", "dotenv"]).stdout
        // unquoted: the one form sh, docker, python-dotenv and systemd read alike
        #expect(dotenv.contains("TALLYFY_TOKEN=\(token)\n"))
        #expect(dotenv.contains("TALLYFY_ORG_ID=org-test\n"))
    }
}

import Foundation
import Testing

/// What a new user stumbles on first (issue 25): typos that get a
/// suggestion, a missing key file that says where its path came from,
/// `--secret-stdin` at a terminal, three passphrase tries, `agent stop` for
/// `eval`, `check --refresh` that never prompts, `rekey` that asks for the
/// passphrase slot, and `rotate-secret` with a refused new secret.
@Suite struct NewcomerTests {
    // MARK: - Typos

    @Test func mistypedCommandsGetTheNearestOne() throws {
        let sandbox = try Sandbox()
        let help = "tallyfy-vault: hint: see `tallyfy-vault help` for the commands\n"
        let cases: [([String], String)] = [
            (["exce", "--", "true"], "tallyfy-vault: unknown command 'exce'; did you mean 'exec'?\n" + help),
            (["user", "list"], "tallyfy-vault: unknown command 'user'; did you mean 'users'?\n" + help),
            (["--profile", "x", "stauts"], "tallyfy-vault: unknown command 'stauts'; did you mean 'status'?\n" + help),
            (["users", "add", "--email", "ann@example.com"],
                "tallyfy-vault: unknown command 'users add'; did you mean 'users create'?\n"
                    + "tallyfy-vault: hint: see `tallyfy-vault help users` for the commands\n"),
            (["keys", "create"],
                "tallyfy-vault: unknown command 'keys create'; did you mean 'keys add'?\n"
                    + "tallyfy-vault: hint: see `tallyfy-vault help keys` for the commands\n"),
            (["agent", "stpo"],
                "tallyfy-vault: unknown command 'agent stpo'; did you mean 'agent stop'?\n"
                    + "tallyfy-vault: hint: see `tallyfy-vault help agent` for the commands\n"),
            (["exec", "true"],
                "tallyfy-vault: unexpected argument 'true': put `--` before the command\n"
                    + "tallyfy-vault: hint: write `tallyfy-vault exec [OPTIONS] -- true`; everything after `--` is the command, passed exactly\n"),
            (["exec", "--min-ttl", "1h", "ls", "/tmp"],
                "tallyfy-vault: unexpected argument 'ls': put `--` before the command\n"
                    + "tallyfy-vault: hint: write `tallyfy-vault exec [OPTIONS] -- ls /tmp`; everything after `--` is the command, passed exactly\n"),
        ]
        for (arguments, expected) in cases {
            let result = try sandbox.run(arguments)
            #expect(result.status == 64, "\(arguments): \(result.brief)")
            #expect(result.stderr == expected, "\(arguments): \(result.stderr)")
            #expect(result.stdout.isEmpty)
        }
        let unknown = try sandbox.run(["frobnicate"])
        #expect(unknown.status == 64)
        #expect(unknown.stderr.hasPrefix("tallyfy-vault: unknown command 'frobnicate'\ntallyfy-vault: hint: see `tallyfy-vault help` for the commands: init, keygen,"),
            "\(unknown.stderr)")
        // Options keep ArgumentParser's own suggestion, and a right command line is untouched.
        let option = try sandbox.run(["status", "--formt", "json"])
        #expect(option.status == 64 && option.stderr.contains("Did you mean '--format'?"), "\(option.brief)")
        #expect(try sandbox.run(["help", "users"]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: sandbox.vaultPath))
    }

    // MARK: - A missing key file

    @Test func aMissingKeyFileSaysWhereItsPathCameFromAndHowToMakeOne() throws {
        let sandbox = try Sandbox()
        let missing = sandbox.path("new.key")
        let fromVariable = try sandbox.run(["init"], env: ["TALLYFY_VAULT_KEY_FILE": missing])
        #expect(fromVariable.status == 66, "\(fromVariable.brief)")
        #expect(fromVariable.stderr == """
            tallyfy-vault: the key file \(missing) (from TALLYFY_VAULT_KEY_FILE) does not exist
            tallyfy-vault: hint: make a new key with `tallyfy-vault keygen \(missing)` (for a new vault), or point TALLYFY_VAULT_KEY_FILE at the key file of this vault

            """, "\(fromVariable.stderr)")
        #expect(!FileManager.default.fileExists(atPath: sandbox.vaultPath))

        try sandbox.initWithKeyFile()
        let before = try sandbox.vaultBytes()
        for arguments in [["--key-file", missing, "credentials", "show"], ["exec", "--key-file", missing, "--", "true"]] {
            let fromOption = try sandbox.run(arguments)
            #expect(fromOption.status == 66, "\(arguments): \(fromOption.brief)")
            #expect(fromOption.stderr.hasPrefix("tallyfy-vault: the key file \(missing) (from --key-file) does not exist\n"
                + "tallyfy-vault: hint: make a new key with `tallyfy-vault keygen \(missing)`"), "\(fromOption.stderr)")
        }
        #expect(try sandbox.vaultBytes() == before)
    }

    // MARK: - At a terminal

    // MARK: - The agent

    // MARK: - rotate-secret
}


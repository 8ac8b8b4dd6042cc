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

    @Test func secretStdinAtATerminalIsRefusedBeforeAnythingIsRead() throws {
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        let before = try sandbox.vaultBytes()
        for arguments in [["credentials", "set", "--org", "org-test", "--client-id", "123", "--secret-stdin"],
            ["rotate-secret", "--secret-stdin"]] {
            // Nothing is typed: had it read standard input it would wait for
            // Ctrl-D (and the driver's 60 s alarm would fail the test).
            let run = try Terminal.run(arguments, environment: sandbox.environment)
            #expect(run.status == 64, "\(arguments): status \(run.status), \(run.output)")
            #expect(run.output.contains(
                "tallyfy-vault: --secret-stdin reads the secret from standard input, which is a terminal here: the secret would show as it is typed\n"
                    + "tallyfy-vault: hint: leave out --secret-stdin to be asked for it without echo, or pipe it in (`--secret-stdin < FILE`)"),
                "\(run.output)")
        }
        #expect(try sandbox.vaultBytes() == before)
    }

    /// A passphrase vault with credentials, and an environment with no unlock source.
    private func passphraseVault() throws -> (Sandbox, passphrase: String, environment: [String: String]) {
        let sandbox = try Sandbox()
        let passphrase = "pp-\(UUID().uuidString)"
        let file = try sandbox.write(passphrase + "\n", to: "pw")
        try sandbox.ok(["init"], env: ["TALLYFY_VAULT_PASSPHRASE_FILE": file])
        try sandbox.ok(["credentials", "set", "--org", "org-test", "--client-id", "client-test", "--secret-stdin",
            "--token-url", "http://127.0.0.1:9/oauth/token", "--api-url", "http://127.0.0.1:9/api"],
            stdin: "cs-\(UUID().uuidString)", env: ["TALLYFY_VAULT_PASSPHRASE_FILE": file])
        return (sandbox, passphrase, sandbox.environment)
    }

    @Test func aWrongPassphraseGetsThreeTriesAtTheSameCost() throws {
        let (sandbox, passphrase, environment) = try passphraseVault()
        var logged = environment
        let log = sandbox.path("kdf-right")
        logged["TALLYFY_VAULT_TEST_KDF_LOG"] = log
        let right = try Terminal.run(["credentials", "show"], environment: logged, steps: [
            ("Vault passphrase: ", "wrong-1\n"),
            ("wrong passphrase, try again (2 tries left)", ""),
            ("Vault passphrase: ", "wrong-2\n"),
            ("wrong passphrase, try again (1 try left)", ""),
            ("Vault passphrase: ", passphrase + "\n"),
        ])
        #expect(right.status == 0, "status \(right.status)")
        #expect(right.output.contains("client-test"))
        // One Argon2id derivation per try, none more to open the vault.
        #expect(try String(contentsOfFile: log, encoding: .utf8) == String(repeating: "argon2id\n", count: 3))

        let before = try sandbox.vaultBytes()
        logged["TALLYFY_VAULT_TEST_KDF_LOG"] = sandbox.path("kdf-wrong")
        let wrong = try Terminal.run(["credentials", "show"], environment: logged, steps: [
            ("Vault passphrase: ", "wrong-1\n"), ("Vault passphrase: ", "wrong-2\n"), ("Vault passphrase: ", "wrong-3\n"),
        ])
        #expect(wrong.status == 77, "status \(wrong.status)")
        #expect(wrong.output.contains("tallyfy-vault: wrong passphrase or key: the passphrase typed at the prompt opens none of the vault's key slots"),
            "\(wrong.output)")
        #expect(wrong.output.components(separatedBy: "Vault passphrase: ").count == 4, "not exactly three prompts")
        #expect(try String(contentsOfFile: sandbox.path("kdf-wrong"), encoding: .utf8) == String(repeating: "argon2id\n", count: 3))
        #expect(try sandbox.vaultBytes() == before)
    }

    @Test func checkRefreshNeverPromptsAndSaysWhatToGive() throws {
        let (sandbox, _, environment) = try passphraseVault()
        defer { withExtendedLifetime(sandbox) {} }
        let expected = "UNKNOWN: --refresh needs the vault's key and none was given (check never prompts): "
            + "give --key-file, --passphrase-file, TALLYFY_VAULT_PASSPHRASE, or a systemd credential tallyfy-vault.key"
        let atTerminal = try Terminal.run(["check", "--refresh"], environment: environment)
        #expect(atTerminal.status == 3, "status \(atTerminal.status): \(atTerminal.output)")
        #expect(atTerminal.output == expected + "\n", "\(atTerminal.output)")
        let cron = try runProcess(BuildProducts.vault, ["check", "--refresh"], environment: environment)
        #expect(cron.status == 3 && cron.stdout == expected + "\n", "\(cron.brief) \(cron.stdout)")
    }

    @Test func rekeyAsksForThePassphraseSlotAtATerminal() throws {
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        let passphrase = "pp-\(UUID().uuidString)"
        let file = try sandbox.write(passphrase + "\n", to: "pw")
        try sandbox.ok(["keys", "add", "--new-passphrase-file", file])

        let refused = try sandbox.refused(["rekey"], status: 64)
        #expect(refused.stderr.contains("none was given for: \"passphrase\""), "\(refused.stderr)")
        #expect(refused.stderr.contains("--passphrase-file") && refused.stderr.contains("TALLYFY_VAULT_PASSPHRASE"), "\(refused.stderr)")

        let before = try sandbox.vaultBytes()
        let run = try Terminal.run(["rekey"], environment: sandbox.environment, steps: [
            ("Passphrase of slot \"passphrase\": ", passphrase + "\n"),
        ])
        #expect(run.status == 0, "status \(run.status): \(run.output)")
        #expect(run.output.contains("re-sealed the vault under a new data key; slots: key-file, passphrase"), "\(run.output)")
        #expect(try sandbox.vaultBytes() != before)
        // Both slots were wrapped again: the key file and the passphrase open the new key.
        try sandbox.ok(["rekey", "--passphrase-file", file])
    }

    // MARK: - The agent

    @Test func agentStartSaysSoAndStopPrintsTheUnsetLines() async throws {
        let world = try await LoggedIn.start()
        defer { _ = world.emulator.stop() }
        let sandbox = world.sandbox
        let runtime = sandbox.root.appendingPathComponent("run")
        try FileManager.default.createDirectory(at: runtime, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        sandbox.environment["XDG_RUNTIME_DIR"] = runtime.path
        let socket = runtime.path + "/tallyfy-vault/agent.sock"
        // Whatever happens below, no agent outlives the test.
        defer { _ = try? sandbox.run(["agent", "stop"]) }

        let script = """
            set -e
            eval "$("$TV" agent --detach 2>"$ERR")"
            echo "started $TALLYFY_VAULT_AGENT_PID $TALLYFY_VAULT_AGENT_SOCK"
            "$TV" agent status >/dev/null
            eval "$("$TV" agent stop 2>/dev/null)"
            echo "after ${TALLYFY_VAULT_AGENT_SOCK-unset} ${TALLYFY_VAULT_AGENT_PID-unset}"
            """
        var environment = sandbox.environment
        environment["TV"] = BuildProducts.vault.path
        environment["ERR"] = sandbox.path("agent-stderr")
        let shell = try runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", script], environment: environment)
        let lines = shell.stdout.split(separator: "\n").map(String.init)
        let started = lines.first?.split(separator: " ").map(String.init) ?? []
        let pid = started.count == 3 ? Int32(started[1]) : nil
        #expect(shell.status == 0, "\(shell.brief)")
        #expect(started.count == 3 && started[2] == socket, "\(shell.stdout)")
        #expect(lines.last == "after unset unset", "\(shell.stdout)")
        let stderr = try String(contentsOfFile: sandbox.path("agent-stderr"), encoding: .utf8)
        #expect(stderr == "tallyfy-vault: agent pid \(pid ?? -1), socket \(socket)\n", "\(stderr)")

        // The exact lines.
        let again = try sandbox.ok(["agent", "--detach"])
        let variables = ["TALLYFY_VAULT_AGENT_SOCK": socket]
        let stopped = try sandbox.ok(["agent", "stop"], env: variables)
        #expect(stopped.stdout == "unset TALLYFY_VAULT_AGENT_SOCK;\nunset TALLYFY_VAULT_AGENT_PID;\n", "\(stopped.stdout)")
        #expect(stopped.stderr == "tallyfy-vault: stopped the agent on \(socket)\n", "\(stopped.stderr)")
        #expect(again.stderr.hasPrefix("tallyfy-vault: agent pid "))
    }

    // MARK: - rotate-secret

    @Test func aRefusedNewSecretSaysTheStoredOneIsStillInUse() async throws {
        let world = try await LoggedIn.start()
        defer { _ = world.emulator.stop() }
        let sandbox = world.sandbox
        let result = try sandbox.refused(["rotate-secret", "--secret-stdin"], status: 77, stdin: "cs-not-known-\(UUID().uuidString)")
        #expect(result.stderr.hasPrefix("tallyfy-vault: Tallyfy refused the new client secret (invalid_client)"), "\(result.stderr)")
        #expect(result.stderr.contains("; the stored secret is unchanged and still in use\n"), "\(result.stderr)")
        #expect(result.stderr.contains("tallyfy-vault: hint: check the new secret"), "\(result.stderr)")
        // The stored one still works.
        try sandbox.ok(["login"])
    }
}

/// Runs `tallyfy-vault` on a pty of its own (its controlling terminal and
/// standard input, output and error), through python3: each step waits for
/// its text to appear after the previous one, then types its answer.
enum Terminal {
    struct Run {
        var status: Int32
        /// Everything the terminal showed, `\r\n` made `\n`.
        var output: String
    }

    static let driver = """
        import os, sys, json, signal, termios, fcntl
        steps = json.loads(os.environ['PTY_STEPS'])
        master, slave = os.openpty()
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for f in (0, 1, 2):
                os.dup2(slave, f)
            os.close(master)
            os.execv(sys.argv[1], sys.argv[1:])
        os.close(slave)
        seen = b''
        def give_up(*_):
            os.kill(pid, signal.SIGKILL)
            print(json.dumps({'status': -1, 'output': 'timeout after: ' + seen.decode('utf-8', 'replace')}))
            sys.exit(0)
        signal.signal(signal.SIGALRM, give_up)
        signal.alarm(60)
        def more():
            global seen
            try:
                chunk = os.read(master, 4096)
            except OSError:
                chunk = b''
            seen += chunk
            return chunk
        position = 0
        for expect, send in steps:
            wanted = expect.encode()
            while seen.find(wanted, position) < 0 and more():
                pass
            at = seen.find(wanted, position)
            if at < 0:
                break
            position = at + len(wanted)
            if send:
                os.write(master, send.encode())
        while more():
            pass
        _, status = os.waitpid(pid, 0)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        print(json.dumps({'status': code, 'output': seen.decode('utf-8', 'replace').replace('\\r\\n', '\\n')}))
        """

    static func run(_ arguments: [String], environment: [String: String], steps: [(String, String)] = []) throws -> Run {
        var environment = environment
        let encoded = try JSONSerialization.data(withJSONObject: steps.map { [$0.0, $0.1] })
        environment["PTY_STEPS"] = String(decoding: encoded, as: UTF8.self)
        let result = try runProcess(URL(fileURLWithPath: "/usr/bin/env"),
            ["python3", "-c", driver, BuildProducts.vault.path] + arguments, environment: environment)
        guard let object = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
            let status = object["status"] as? Int, let output = object["output"] as? String
        else {
            return Run(status: -2, output: "the pty driver failed: \(result.brief)")
        }
        return Run(status: Int32(status), output: output)
    }
}

import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Issue 9, the items that are not a refusal (those are rows of the
/// bad-input matrix): what must work, and work safely, against hostile
/// input, concurrent writers, other users and signals.
@Suite struct HostileInputTests {
    let client = "client-test"

    private func loggedIn(secrets: [String]) async throws -> (Sandbox, Emulator) {
        let emulator = try await Emulator.start(clients: secrets.map { (client, $0) })
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        try sandbox.storeCredentials(for: emulator, secret: secrets[0])
        try sandbox.ok(["login"])
        return (sandbox, emulator)
    }

    /// A secret piped with a Windows line ending loses it, as a passphrase
    /// file's first line does; the secret then works.
    @Test func aSecretEndingInCRLFIsStoredWithoutIt() async throws {
        let secret = "cs-\(UUID().uuidString)"
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        try sandbox.ok(["credentials", "set", "--org", "org-test", "--client-id", client, "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: secret + "\r\n")
        try sandbox.ok(["login"])
    }

    /// `eval "$(tallyfy-vault export)"` must not mark the shell as an exec
    /// child: a later `exec` from that shell works.
    @Test func anExportedShellCanStillExec() async throws {
        let (sandbox, emulator) = try await loggedIn(secrets: ["cs-\(UUID().uuidString)"])
        defer { _ = emulator.stop() }
        let exported = try sandbox.ok(["export"]).stdout
        #expect(!exported.contains("TALLYFY_VAULT_EXEC"))
        let file = try sandbox.write(exported, to: "exported.sh")
        let result = try runProcess(URL(fileURLWithPath: "/bin/sh"),
            ["-c", "eval \"$(cat \"$1\")\" && exec \"$2\" exec -- sh -c 'printf %s \"$TALLYFY_VAULT_EXEC\"'", "sh", file, BuildProducts.vault.path],
            environment: sandbox.environment)
        #expect(result.status == 0, "\(result.brief)")
        #expect(result.stdout == "default")
    }

    /// The dotenv output means the same to every reader that is here: sh
    /// (`set -a; .`) and python-dotenv (when installed).
    @Test func dotenvReadsTheSameInShAndPythonDotenv() async throws {
        let (sandbox, emulator) = try await loggedIn(secrets: ["cs-\(UUID().uuidString)"])
        defer { _ = emulator.stop() }
        let token = try sandbox.ok(["token"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let file = try sandbox.write(try sandbox.ok(["export", "--format", "dotenv"]).stdout, to: "env")
        let viaSh = try runProcess(URL(fileURLWithPath: "/bin/sh"),
            ["-c", "set -a; . \"$1\"; printf '%s|%s' \"$TALLYFY_TOKEN\" \"$TALLYFY_API_URL\"", "sh", file], environment: ["PATH": "/usr/bin:/bin"])
        #expect(viaSh.stdout == "\(token)|\(emulator.apiURL)")
        let python = ProcessInfo.processInfo.environment["PATH"].map { _ in "/usr/bin/env" } ?? "/usr/bin/env"
        let viaPython = try runProcess(URL(fileURLWithPath: python),
            ["python3", "-c", "import sys\ntry:\n import dotenv\nexcept ImportError:\n print('no-dotenv'); sys.exit(0)\nv = dotenv.dotenv_values(sys.argv[1])\nprint(v['TALLYFY_TOKEN'] + '|' + v['TALLYFY_API_URL'], end='')", file],
            environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": ProcessInfo.processInfo.environment["HOME"] ?? "/root"])
        if viaPython.stdout != "no-dotenv" {
            #expect(viaPython.stdout == "\(token)|\(emulator.apiURL)", "\(viaPython.brief)")
        }
    }

    /// A symbolic link to the vault stays a link; its target is what is
    /// replaced (and keeps its mode), so every path to the vault sees the write.
    @Test func aWriteThroughASymlinkReplacesTheTarget() async throws {
        let secret = "cs-\(UUID().uuidString)"
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        try FileManager.default.createDirectory(atPath: sandbox.path("real"), withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        #expect(rename(sandbox.vaultPath, sandbox.path("real/vault")) == 0)
        chmod(sandbox.path("real/vault"), 0o400)
        #expect(symlink(sandbox.path("real/vault"), sandbox.vaultPath) == 0)
        try sandbox.storeCredentials(for: emulator, secret: secret)
        try sandbox.ok(["login"])
        var info = stat()
        #expect(lstat(sandbox.vaultPath, &info) == 0 && info.st_mode & S_IFMT == S_IFLNK, "the link was replaced by a file")
        #expect(stat(sandbox.path("real/vault"), &info) == 0 && info.st_mode & 0o777 == 0o400, "the target's mode changed")
        #expect(FileManager.default.fileExists(atPath: sandbox.path("real/vault.lock")), "the lock is not beside the target")
        try sandbox.ok(["token", "--no-refresh"], env: ["TALLYFY_VAULT_FILE": sandbox.path("real/vault")])
    }

    /// Two rotations started against one secret: the second sees, under the
    /// lock, that the secret changed, and fails (75) instead of overwriting.
    @Test func twoRotationsAtOnceDoNotBothWin() async throws {
        let old = "cs-old-\(UUID().uuidString)"
        let first = "cs-a-\(UUID().uuidString)"
        let second = "cs-b-\(UUID().uuidString)"
        let (sandbox, emulator) = try await loggedIn(secrets: [old, first, second])
        defer { _ = emulator.stop() }
        let lock = try VaultLockHolder(vaultPath: sandbox.vaultPath)
        let a = try sandbox.launch(["rotate-secret", "--secret-stdin"], stdin: first, env: ["TALLYFY_VAULT_LOCK_TIMEOUT": "60"])
        let b = try sandbox.launch(["rotate-secret", "--secret-stdin"], stdin: second, env: ["TALLYFY_VAULT_LOCK_TIMEOUT": "60"])
        defer { a.kill(); b.kill() }
        // Both have read the vault (the secret they rotate) once they wait on the lock file.
        func waitsOnLock(_ pid: Int32) -> Bool {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
            return fds.contains { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) == sandbox.vaultPath + ".lock" }
        }
        #expect(ProcView.waitUntil(seconds: 30) { waitsOnLock(a.pid) && waitsOnLock(b.pid) })
        lock.release()
        let results = [a.wait(), b.wait()]
        #expect(results.filter { $0.status == 0 }.count == 1, "\(results.map(\.brief))")
        let loser = results.first { $0.status != 0 }
        #expect(loser?.status == 75, "\(loser?.brief ?? "")")
        #expect(loser?.stderr.contains("changed by another process") == true)
        for result in results { #expect(!(result.stderr + result.stdout).contains("cs-")) }
        // The winner's secret is the one sealed, and it works.
        try sandbox.ok(["login"])
    }

    /// A passphrase slot below `interactive` (what a debug build's test
    /// cost writes) is flagged by `keys list` and `status`.
    @Test func weakSlotsAreFlagged() throws {
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        let file = try sandbox.write("a passphrase\n", to: "pw")
        try sandbox.ok(["keys", "add", "--new-passphrase-file", file, "--label", "cheap"])
        let list = try sandbox.ok(["keys", "list"])
        #expect(list.stdout.contains("WEAK"), "\(list.stdout)")
        #expect(list.stderr.contains("\"cheap\""))
        let status = try sandbox.ok(["status"]).stdout
        #expect(status.contains("cheap (passphrase, WEAK"), "\(status)")
        #expect(!status.contains("key-file (key-file, WEAK"))
        let json = try sandbox.ok(["status", "--format", "json"]).stdout
        #expect(json.contains(#""weak":true"#))
    }

    /// SIGINT or SIGTERM at a passphrase prompt: the terminal gets its echo
    /// back, and the process still dies of the signal. The test drives its
    /// own pty (python3's os.openpty), keeping the terminal side open to read
    /// its settings after the process is gone.
    @Test(arguments: ["SIGINT", "SIGTERM"])
    func aSignalAtThePromptRestoresEcho(signal: String) throws {
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        let file = try sandbox.write("a passphrase\n", to: "pw")
        try sandbox.ok(["keys", "add", "--new-passphrase-file", file])
        let script = """
            import os, sys, termios, signal, fcntl
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            master, slave = os.openpty()
            pid = os.fork()
            if pid == 0:
                # As a shell would start it: no signal blocked or ignored (the
                # test runner's threads block most signals, and a blocked mask
                # is inherited across exec).
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                for s in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(s, signal.SIG_DFL)
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                for f in (0, 1, 2):
                    os.dup2(slave, f)
                os.execv(sys.argv[1], sys.argv[1:])
            def give_up(*_):
                os.kill(pid, signal.SIGKILL)
                print('timeout')
                sys.exit(1)
            signal.signal(signal.SIGALRM, give_up)
            signal.alarm(60)
            seen = b''
            while b'assphrase' not in seen:
                seen += os.read(master, 1024)
            during = termios.tcgetattr(slave)[3] & termios.ECHO != 0
            os.kill(pid, getattr(signal, os.environ['TEST_SIGNAL']))
            _, status = os.waitpid(pid, 0)
            after = termios.tcgetattr(slave)[3] & termios.ECHO != 0
            how = 'signal %d' % os.WTERMSIG(status) if os.WIFSIGNALED(status) else 'exit %d' % os.WEXITSTATUS(status)
            print('during=%s after=%s %s' % (during, after, how))
            """
        var environment = sandbox.environment
        environment["TALLYFY_VAULT_KEY_FILE"] = nil
        environment["TEST_SIGNAL"] = signal
        let result = try runProcess(URL(fileURLWithPath: "/usr/bin/env"),
            ["python3", "-c", script, BuildProducts.vault.path, "credentials", "show"], environment: environment)
        let number = signal == "SIGINT" ? SIGINT : SIGTERM
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "during=False after=True signal \(number)", "\(result.stdout) \(result.stderr)")
    }
}

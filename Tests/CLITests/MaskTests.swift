import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `exec --mask` end to end: the real binary, a real child printing its token
/// in the forms programs print it, the emulator issuing the tokens. Tests
/// never print a token: on failure they show the status and standard error.
@Suite(.serialized) struct MaskTests {
    private let python = "/usr/bin/python3"

    /// The token the vault hands out now (sealed, fresh: the one `exec` gives).
    private func token(_ sandbox: Sandbox) throws -> String {
        try sandbox.ok(["token"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs `script` (Python) under `exec` with `options` through a shell,
    /// its standard output and error into files, read back as bytes.
    private func exec(
        _ sandbox: Sandbox, _ options: [String], python script: String, env extra: [String: String] = [:]
    ) throws -> (status: Int32, stdout: [UInt8], stderr: [UInt8]) {
        let out = sandbox.path("out-\(UUID().uuidString)")
        let err = sandbox.path("err-\(UUID().uuidString)")
        // Through `| cat`: the output is a pipe, as in CI.
        let line = #""$TV" exec "$@" 2>"$ERR" | cat >"$OUT""#
        let result = try runProcess(URL(fileURLWithPath: "/bin/bash"),
            ["-c", "set -o pipefail; " + line, "bash"] + options + ["--", python, "-c", script],
            environment: sandbox.environment.merging(extra) { $1 }.merging(["TV": BuildProducts.vault.path, "OUT": out, "ERR": err]) { $1 })
        let stdout = [UInt8](FileManager.default.contents(atPath: out) ?? Data())
        let stderr = [UInt8](FileManager.default.contents(atPath: err) ?? Data())
        return (result.status, stdout, stderr)
    }

    private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    /// Whether `haystack` holds `needle` (bytes, so binary output works too).
    private func holds(_ haystack: [UInt8], _ needle: String) -> Bool {
        let needle = Array(needle.utf8)
        guard !needle.isEmpty, needle.count <= haystack.count else { return false }
        return (0...(haystack.count - needle.count)).contains { haystack[$0..<($0 + needle.count)].elementsEqual(needle) }
    }

    /// The base64 of `token` less its last group: in every form of its base64.
    private func base64Core(_ token: String) -> String {
        String(Data(token.utf8).base64EncodedString().dropLast(4))
    }

    static let forms = """
        import base64, json, os, sys, urllib.parse
        t = os.environ["TALLYFY_TOKEN"]
        b = t.encode()
        lines = [
            "raw [%s]" % t,
            "bearer [Authorization: BEARER %s]" % t,
            "b64 [%s]" % base64.b64encode(b).decode(),
            "b64url [%s]" % base64.urlsafe_b64encode(b).decode(),
            "unpadded [%s]" % base64.urlsafe_b64encode(b).decode().rstrip("="),
            "percent [%s]" % urllib.parse.quote(t, safe=""),
            "json [%s]" % json.dumps({"token": t}),
        ]
        for k in range(3):
            lines.append("inside%d [%s]" % (k, base64.b64encode(b"\\xa5" * k + b + b"\\x5a\\x5a\\x5a").decode()))
        for line in lines:
            print(line, flush=True)
            print(line, file=sys.stderr, flush=True)
        """

    @Test func everyFormOnStandardOutputAndErrorIsMasked() async throws {
        let fixture = try await LoggedIn.start()
        defer { _ = fixture.emulator.stop() }
        let sandbox = fixture.sandbox
        let token = try token(sandbox)
        let run = try exec(sandbox, ["--mask"], python: Self.forms)
        #expect(run.status == 0, "stderr: \(text(run.stderr))")
        for stream in [run.stdout, run.stderr] {
            #expect(!holds(stream, token) && !holds(stream, base64Core(token)), "a form of the token got through")
            let lines = text(stream).split(separator: "\n").map(String.init)
            #expect(Array(lines.prefix(7)) == [
                "raw [<redacted>]", "bearer [Authorization: BEARER <redacted>]", "b64 [<redacted>]", "b64url [<redacted>]",
                "unpadded [<redacted>]", "percent [<redacted>]", #"json [{"token": "<redacted>"}]"#,
            ])
            // Inside a longer base64 string only the characters that also
            // depend on the neighbouring bytes are left.
            let inside = lines.dropFirst(7)
            #expect(inside.count == 3)
            for line in inside {
                #expect(line.range(of: #"^inside[0-2] \[[A-Za-z0-9+/]{0,3}<redacted>[A-Za-z0-9+/=]{0,8}\]$"#, options: .regularExpression) != nil,
                    "not masked as expected (\(line.count) characters)")
            }
        }
        // Without --mask the same child prints the token: the test can fail.
        let plain = try exec(sandbox, [], python: Self.forms)
        #expect(holds(plain.stdout, token) && holds(plain.stderr, base64Core(token)))
    }

    @Test func aTokenWrittenInPiecesWithPausesIsMasked() async throws {
        let fixture = try await LoggedIn.start()
        defer { _ = fixture.emulator.stop() }
        let sandbox = fixture.sandbox
        let token = try token(sandbox)
        // Two writes with a pause (longer than any idle flush) at several
        // offsets, then three writes; `os.write` so nothing is buffered.
        let script = """
            import os, time
            t = os.environ["TALLYFY_TOKEN"].encode()
            for cut in (1, 2, 10, len(t) // 2, len(t) - 1):
                os.write(1, b"a " + t[:cut]); time.sleep(0.06); os.write(1, t[cut:] + b" b\\n")
            os.write(2, b"c " + t[:5]); time.sleep(0.06); os.write(2, t[5:40]); time.sleep(0.06); os.write(2, t[40:] + b" d\\n")
            os.write(1, b"prompt> ")
            """
        let run = try exec(sandbox, ["--mask"], python: script)
        #expect(run.status == 0, "stderr: \(text(run.stderr))")
        #expect(text(run.stdout) == String(repeating: "a <redacted> b\n", count: 5) + "prompt> ")
        #expect(text(run.stderr) == "c <redacted> d\n")
        #expect(!holds(run.stdout, String(token.prefix(12))))
    }

    @Test func binaryOutputPassesUnchangedAndATokenInItIsMasked() async throws {
        let fixture = try await LoggedIn.start()
        defer { _ = fixture.emulator.stop() }
        let sandbox = fixture.sandbox
        let token = try token(sandbox)
        var generator = SystemRandomNumberGenerator()
        let noise = (0..<1_000_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let input = sandbox.path("binary")
        FileManager.default.createFile(atPath: input, contents: Data(noise))
        let out = sandbox.path("binary-out")
        let result = try runProcess(URL(fileURLWithPath: "/bin/bash"),
            ["-c", #""$TV" exec --mask -- cat "$IN" | cat >"$OUT""#],
            environment: sandbox.environment.merging(["TV": BuildProducts.vault.path, "IN": input, "OUT": out]) { $1 })
        #expect(result.status == 0, "\(result.brief)")
        #expect(FileManager.default.contents(atPath: out) == Data(noise), "binary output changed")

        // The token in the middle of it: only the token changes.
        FileManager.default.createFile(atPath: input, contents: Data(noise.prefix(500_000) + Array(token.utf8) + noise.suffix(500_000)))
        let masked = try runProcess(URL(fileURLWithPath: "/bin/bash"),
            ["-c", #""$TV" exec --mask -- cat "$IN" | cat >"$OUT""#],
            environment: sandbox.environment.merging(["TV": BuildProducts.vault.path, "IN": input, "OUT": out]) { $1 })
        #expect(masked.status == 0, "\(masked.brief)")
        let expected = Data(noise.prefix(500_000) + Array("<redacted>".utf8) + noise.suffix(500_000))
        #expect(FileManager.default.contents(atPath: out) == expected, "more than the token changed")
    }

    @Test func exitStatusAndSignalsPassThroughAndNoChildIsLeft() async throws {
        let fixture = try await LoggedIn.start()
        defer { _ = fixture.emulator.stop() }
        let sandbox = fixture.sandbox
        #expect(try exec(sandbox, ["--mask"], python: "import sys; print('bye'); sys.exit(7)").status == 7)
        #expect(try exec(sandbox, ["--mask"], python: "import os, signal; os.kill(os.getpid(), signal.SIGKILL)").status == 128 + SIGKILL)
        let missing = try sandbox.run(["exec", "--mask", "--", "no-such-command-\(UUID().uuidString)"])
        #expect(missing.status == 127 && missing.stderr.hasPrefix("tallyfy-vault: "), "\(missing.brief)")

        // SIGTERM to the supervisor reaches the child, whose last words and
        // status come through.
        let pidFile = sandbox.path("child-pid")
        let script = """
            import os, signal, sys, time
            def stop(number, frame):
                print("stopping on TERM " + os.environ["TALLYFY_TOKEN"], flush=True)
                sys.exit(3)
            signal.signal(signal.SIGTERM, stop)
            open(os.environ["PIDFILE"], "w").write(str(os.getpid()))
            while True: time.sleep(0.05)
            """
        let supervisor = try sandbox.launch(["exec", "--mask", "--", python, "-c", script], env: ["PIDFILE": pidFile])
        defer { supervisor.kill() }
        var childPid: Int32 = 0
        #expect(ProcView.waitUntil(seconds: 20) {
            childPid = Int32((try? String(contentsOfFile: pidFile, encoding: .utf8)) ?? "") ?? 0
            return childPid > 0
        })
        supervisor.kill(SIGTERM)
        let result = supervisor.wait()
        #expect(result.status == 3, "\(result.brief)")
        #expect(result.stdout == "stopping on TERM <redacted>\n")
        #expect(kill(childPid, 0) != 0 && errno == ESRCH, "the child is still there (or a zombie)")
    }

    @Test func theVariableTurnsItOnForEveryExecAndNoMaskOff() async throws {
        let fixture = try await LoggedIn.start()
        defer { _ = fixture.emulator.stop() }
        let sandbox = fixture.sandbox
        let token = try token(sandbox)
        let printIt = "import os; print('t=' + os.environ['TALLYFY_TOKEN'])"
        // A plain exec with a fresh token and a key file is the launcher's
        // fast path: it masks by itself (LauncherTests checks it has no CLI).
        let masked = try exec(sandbox, [], python: printIt, env: ["TALLYFY_VAULT_MASK": "1"])
        #expect(masked.status == 0 && text(masked.stdout) == "t=<redacted>\n", "stderr: \(text(masked.stderr))")
        for options in [["--no-mask"], ["--mask", "--no-mask"]] {
            let plain = try exec(sandbox, options, python: printIt, env: ["TALLYFY_VAULT_MASK": "1"])
            #expect(plain.status == 0 && text(plain.stdout) == "t=\(token)\n", "\(options): stderr: \(text(plain.stderr))")
        }
        let off = try exec(sandbox, [], python: printIt, env: ["TALLYFY_VAULT_MASK": "0"])
        #expect(text(off.stdout) == "t=\(token)\n")
        let bad = try sandbox.refused(["exec", "--", "true"], status: 64, env: ["TALLYFY_VAULT_MASK": "yes"])
        #expect(bad.stderr.contains("TALLYFY_VAULT_MASK=yes is not 1 or 0"))
    }

    /// Renewed tokens join the masker before the child can read them.
    @Test func withKeepFreshEveryRenewedTokenIsMaskedToo() async throws {
        let fixture = try await LoggedIn.start(appTokenTTL: 4)
        defer { _ = fixture.emulator.stop() }
        let sandbox = fixture.sandbox
        let runtime = sandbox.path("run")
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        let log = sandbox.path("seen")
        let script = """
            import os, time
            seen = []
            deadline = time.time() + 60
            while len(seen) < 3 and time.time() < deadline:
                t = open(os.environ["TALLYFY_TOKEN_FILE"]).read()
                if t not in seen:
                    seen.append(t)
                    open(os.environ["LOG"], "a").write(t + "\\n")
                    print("token " + t, flush=True)
                    os.write(2, ("half " + t[:30]).encode()); time.sleep(0.03); os.write(2, (t[30:] + "\\n").encode())
                time.sleep(0.1)
            """
        let run = try exec(sandbox, ["--keep-fresh", "--mask", "--min-ttl", "2s"], python: script,
            env: ["LOG": log, "XDG_RUNTIME_DIR": runtime])
        #expect(run.status == 0, "stderr: \(text(run.stderr))")
        let tokens = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        #expect(tokens.count == 3 && Set(tokens).count == 3, "the child saw \(tokens.count) tokens")
        #expect(text(run.stdout) == String(repeating: "token <redacted>\n", count: 3))
        #expect(text(run.stderr) == String(repeating: "half <redacted>\n", count: 3))
        for token in tokens { #expect(!holds(run.stdout, token) && !holds(run.stderr, String(token.suffix(40)))) }
    }

    /// On a terminal the child gets a pseudo-terminal: it sees a terminal of
    /// our size (and a new one after SIGWINCH), its escape sequences and a
    /// prompt without a newline arrive unchanged, keys reach it, the token
    /// is masked, and our terminal's settings come back. The test drives its
    /// own pty (python3's os.openpty), as HostileInputTests does.
    /// With our standard error not a terminal, the child's is a pipe of its own.
    @Test(arguments: [false, true])
    func onATerminalTheChildGetsATerminal(stderrToFile: Bool) async throws {
        let fixture = try await LoggedIn.start()
        defer { _ = fixture.emulator.stop() }
        let sandbox = fixture.sandbox
        let child = """
            import os, signal, sys, time
            resized = []
            signal.signal(signal.SIGWINCH, lambda *_: resized.append(1))
            print("tty=%s,%s,%s size=%d,%d" % (os.isatty(0), os.isatty(1), os.isatty(2), *os.get_terminal_size()), flush=True)
            print("err " + os.environ["TALLYFY_TOKEN"], file=sys.stderr, flush=True)
            print("\\x1b[31mred " + os.environ["TALLYFY_TOKEN"] + "\\x1b[0m", flush=True)
            while not resized:
                time.sleep(0.01)
            print("resized size=%d,%d" % os.get_terminal_size(), flush=True)
            # input() writes its prompt to standard error on a terminal.
            sys.stdout.write("name? ")
            sys.stdout.flush()
            name = sys.stdin.readline().strip()
            print("hello " + name, flush=True)
            sys.exit(5)
            """
        // Each step waits for what the child printed before, never for time.
        let driver = """
            import os, sys, termios, signal, fcntl, struct
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
            pid = os.fork()
            if pid == 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                for f in (0, 1, 2):
                    os.dup2(slave, f)
                if os.environ.get("STDERR_FILE"):
                    os.dup2(os.open(os.environ["STDERR_FILE"], os.O_WRONLY | os.O_CREAT, 0o600), 2)
                os.execv(sys.argv[1], sys.argv[1:])
            def give_up(*_):
                os.kill(pid, signal.SIGKILL)
                print("timeout after %d bytes" % len(seen))
                sys.exit(1)
            signal.signal(signal.SIGALRM, give_up)
            signal.alarm(60)
            seen = b""
            def until(marker):
                global seen
                while marker not in seen:
                    seen += os.read(master, 4096)
            until(b"\\x1b[0m")
            raw = termios.tcgetattr(slave)[3] & termios.ECHO == 0
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            os.kill(pid, signal.SIGWINCH)
            until(b"name? ")
            os.write(master, b"ann\\r")
            until(b"hello ann\\r\\n")
            _, status = os.waitpid(pid, 0)
            restored = termios.tcgetattr(slave)[3] & termios.ECHO != 0
            sys.stdout.buffer.write(seen)
            print("|raw=%s restored=%s exit=%d" % (raw, restored, os.WEXITSTATUS(status)))
            """
        let stderrFile = sandbox.path("stderr")
        let result = try runProcess(URL(fileURLWithPath: "/usr/bin/env"),
            ["python3", "-c", driver, BuildProducts.vault.path, "exec", "--mask", "--", python, "-c", child],
            environment: sandbox.environment.merging(["STDERR_FILE": stderrToFile ? stderrFile : ""]) { $1 })
        let token = try token(sandbox)
        #expect(!result.stdout.contains(token), "the token reached the terminal")
        let stderr = (try? String(contentsOfFile: stderrFile, encoding: .utf8)) ?? ""
        #expect(stderr == (stderrToFile ? "err <redacted>\n" : ""))
        let expected =
            [stderrToFile ? "tty=True,True,False size=101,33" : "tty=True,True,True size=101,33"]
            + (stderrToFile ? [] : ["err <redacted>"])
            + ["\u{1b}[31mred <redacted>\u{1b}[0m", "resized size=120,40", "name? ann", "hello ann", "|raw=True restored=True exit=5"]
        #expect(result.stdout.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n").map(String.init) == expected,
            "\(result.stdout.count) bytes: \(result.stdout.replacingOccurrences(of: token, with: "TOKEN"))")
    }

    /// A supervised child starts with no signal blocked, as from a shell,
    /// not with the mask of the runtime's thread that starts it, which
    /// blocks SIGTERM, SIGALRM, SIGCONT, SIGTSTP and others.
    @Test(arguments: [["--mask"], ["--keep-fresh"]])
    func theChildStartsWithNoSignalBlocked(options: [String]) async throws {
        let fixture = try await LoggedIn.start()
        defer { _ = fixture.emulator.stop() }
        let unblocked = "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); os.execv(sys.argv[1], sys.argv[1:])"
        let report = "print([line for line in open('/proc/self/status') if line.startswith('SigBlk')][0], end='')"
        let result = try runProcess(URL(fileURLWithPath: "/usr/bin/env"),
            ["python3", "-c", unblocked, BuildProducts.vault.path, "exec"] + options + ["--", python, "-c", report],
            environment: fixture.sandbox.environment)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == "SigBlk:\t0000000000000000\n")
    }

    /// ^Z on a terminal: the command stops through its own terminal, then
    /// the supervisor stops too with our terminal's settings given back, as
    /// a job-control shell expects; continued, both go on (raw mode again).
    /// The driver is a small job-control shell: it runs the supervisor as a
    /// foreground job in its own process group on a pty and reports what it
    /// sees on that terminal; each step waits for what was printed before.
    @Test func controlZStopsTheJobAndGivesTheTerminalBack() async throws {
        let fixture = try await LoggedIn.start()
        defer { _ = fixture.emulator.stop() }
        let sandbox = fixture.sandbox
        let child = """
            import os, signal, sys
            # os.write: a second SIGCONT may arrive while the first one prints.
            signal.signal(signal.SIGCONT, lambda *_: os.write(1, b"continued\\n"))
            print("ready", flush=True)
            name = sys.stdin.readline().strip()
            print("hello " + name + " " + os.environ["TALLYFY_TOKEN"], flush=True)
            """
        let driver = """
            import os, sys, termios, signal
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            master, slave = os.openpty()
            jobs, job_named = os.pipe()  # the shell names its job's process group here
            shell = os.fork()
            if shell == 0:
                os.setsid()
                import fcntl
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                signal.signal(signal.SIGTTOU, signal.SIG_IGN)
                job = os.fork()
                if job == 0:
                    os.setpgid(0, 0)
                    for number in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
                        signal.signal(number, signal.SIG_DFL)  # as a shell does for its jobs
                    for f in (0, 1, 2):
                        os.dup2(slave, f)
                    os.execv(sys.argv[1], sys.argv[1:])
                os.setpgid(job, job)
                os.write(job_named, b"%d" % job)
                os.tcsetpgrp(slave, job)
                _, status = os.waitpid(job, os.WUNTRACED)
                os.tcsetpgrp(slave, os.getpgrp())
                cooked = termios.tcgetattr(slave)[3] & termios.ECHO != 0
                os.write(slave, b"[stopped=%d cooked=%d]\\n" % (os.WIFSTOPPED(status), cooked))
                os.tcsetpgrp(slave, job)
                os.kill(-job, signal.SIGCONT)
                _, status = os.waitpid(job, 0)
                os.tcsetpgrp(slave, os.getpgrp())
                os.write(slave, b"[exit=%d]\\n" % os.waitstatus_to_exitcode(status))
                os._exit(0)
            def give_up(*_):
                # The job (the vault and what it runs) is a process group of
                # its own and may be stopped: SIGKILL it as well as the shell's,
                # so a failed run leaves nothing stopped behind.
                os.set_blocking(jobs, False)
                try:
                    os.killpg(int(os.read(jobs, 32)), signal.SIGKILL)
                except (OSError, ValueError):
                    pass  # no job was started
                os.killpg(shell, signal.SIGKILL)
                print("timeout after %r" % seen)
                sys.exit(1)
            signal.signal(signal.SIGALRM, give_up)
            signal.alarm(60)
            seen = b""
            def until(marker):
                global seen
                while marker not in seen:
                    seen += os.read(master, 4096)
            until(b"ready")
            os.write(master, b"\\x1a")
            until(b"]")
            until(b"continued")
            os.write(master, b"ann\\r")
            until(b"[exit=")
            until(b"]")
            os.waitpid(shell, 0)
            sys.stdout.buffer.write(seen)
            """
        let result = try runProcess(URL(fileURLWithPath: "/usr/bin/env"),
            ["python3", "-c", driver, BuildProducts.vault.path, "exec", "--mask", "--", python, "-c", child],
            environment: sandbox.environment)
        let token = try token(sandbox)
        let shown = result.stdout.replacingOccurrences(of: token, with: "TOKEN")
        #expect(!result.stdout.contains(token), "the token reached the terminal")
        #expect(result.stdout.contains("[stopped=1 cooked=1]"), "\(shown)")
        #expect(result.stdout.contains("hello ann <redacted>"), "\(shown)")
        #expect(result.stdout.contains("[exit=0]"), "\(shown)")
    }
}

import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `exec --keep-fresh` end to end: the real binary supervising a real child,
/// the emulator issuing tokens that live a few seconds. Every wait is on a
/// condition (a file, a counter, a process), never a fixed sleep.
@Suite(.serialized) struct KeepFreshTests {
    let secret = "cs-\(UUID().uuidString)"

    /// A sandbox logged in to a fresh emulator, with its own private
    /// `XDG_RUNTIME_DIR` so token folders can be watched.
    private func loggedIn(appTokenTTL: Int? = nil) async throws -> (Sandbox, Emulator) {
        let emulator = try await Emulator.start(clients: [("client-test", secret)], appTokenTTL: appTokenTTL)
        let sandbox = try Sandbox()
        let runtime = sandbox.path("run")
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        sandbox.environment["XDG_RUNTIME_DIR"] = runtime
        try sandbox.initWithKeyFile()
        try sandbox.storeCredentials(for: emulator, secret: secret)
        try sandbox.ok(["login"])
        return (sandbox, emulator)
    }

    /// The supervisors' folders under `$XDG_RUNTIME_DIR/tallyfy-vault`.
    private func tokenFolders(_ sandbox: Sandbox) -> [String] {
        let base = sandbox.path("run/tallyfy-vault")
        return ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []).filter { $0.hasPrefix("exec-") }.map { base + "/" + $0 }
    }

    private func contents(_ path: String) -> String? {
        FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
    }

    private func lines(_ path: String) -> [String] {
        (contents(path) ?? "").split(separator: "\n").map(String.init)
    }

    /// Whether the emulator accepts `token` right now.
    private func accepted(_ token: String, by emulator: Emulator) async throws -> Bool {
        let reply = try await emulator.send(.GET, "/api/organizations/org-test/me",
            headers: ["Authorization": "Bearer \(token)", "X-Tallyfy-Client": "APIClient"])
        return reply.status == 200
    }

    /// Gone, or a zombie nobody reaped (which runs no more code).
    private func isGone(_ pid: Int32) -> Bool {
        guard let stat = contents("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
    }

    private func pid(in path: String) -> Int32? {
        contents(path).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    private let shell = "/bin/sh"

    @Test func theChildAlwaysReadsATokenTheServerAccepts() async throws {
        let (sandbox, emulator) = try await loggedIn(appTokenTTL: 5)
        defer { _ = emulator.stop() }
        let log = sandbox.path("reads")
        // docs/exec.md's example, timed: every read is used against /me at once.
        let script = """
            end=$(( $(date +%s) + 15 ))
            while [ "$(date +%s)" -lt "$end" ]; do
              t=$(cat "$TALLYFY_TOKEN_FILE")
              code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $t" -H 'X-Tallyfy-Client: APIClient' \\
                "$TALLYFY_API_URL/organizations/$TALLYFY_ORG_ID/me")
              printf '%s %s\\n' "$code" "$t" >> "$LOG"
              sleep 0.2
            done
            """
        let result = try sandbox.run(["exec", "--keep-fresh", "--min-ttl", "2s", "--", shell, "-c", script], env: ["LOG": log])
        #expect(result.status == 0, "\(result.brief)")
        let reads = lines(log).map { $0.split(separator: " ", maxSplits: 1).map(String.init) }
        #expect(reads.count >= 30, "only \(reads.count) reads")
        let refused = reads.filter { $0.count != 2 || $0[0] != "200" }
        #expect(refused.isEmpty, "\(refused.count) of \(reads.count) reads were refused: \(refused.map { $0.first ?? "" })")
        #expect(reads.allSatisfy { $0.count == 2 && $0[1].split(separator: ".").count == 3 }, "an empty or partial token was read")
        let distinct = Set(reads.compactMap { $0.count == 2 ? $0[1] : nil })
        #expect(distinct.count >= 3, "the child saw \(distinct.count) tokens")
        #expect(result.stderr.isEmpty, "\(result.stderr)")
        #expect(tokenFolders(sandbox).isEmpty, "the token file was left behind")
    }

    @Test func signalOnRenewIsSentOncePerRenewal() async throws {
        let (sandbox, emulator) = try await loggedIn(appTokenTTL: 4)
        defer { _ = emulator.stop() }
        let log = sandbox.path("hups")
        let script = """
            n=0
            trap 'n=$((n+1)); printf "%s\\n" "$(cat "$TALLYFY_TOKEN_FILE")" >> "$LOG"; [ "$n" -ge 3 ] && exit 0' HUP
            while :; do sleep 0.1; done
            """
        let result = try sandbox.run(["exec", "--keep-fresh", "--on-renew", "signal:HUP", "--min-ttl", "2s", "--", shell, "-c", script],
            env: ["LOG": log])
        #expect(result.status == 0, "\(result.brief)")
        let seen = lines(log)
        #expect(seen.count == 3)
        #expect(Set(seen).count == 3, "a HUP came without a new token")
        // Login, then three renewals: one HUP each, none missed or doubled.
        #expect(try await emulator.counts()["token"] == 4)
    }

    @Test func restartStopsTheChildAndStartsItWithTheNewToken() async throws {
        let (sandbox, emulator) = try await loggedIn(appTokenTTL: 4)
        defer { _ = emulator.stop() }
        let log = sandbox.path("starts")
        let script = """
            trap 'echo TERM >> "$LOG"; exit 0' TERM
            if [ "$TALLYFY_TOKEN" = "$(cat "$TALLYFY_TOKEN_FILE")" ]; then same=same; else same=differ; fi
            printf 'start %s %s %s\\n' "$$" "$same" "$TALLYFY_TOKEN" >> "$LOG"
            while :; do sleep 0.1; done
            """
        let supervisor = try sandbox.launch(["exec", "--keep-fresh", "--on-renew", "restart", "--min-ttl", "2s", "--", shell, "-c", script],
            env: ["LOG": log])
        let threeStarts = ProcView.waitUntil(seconds: 30) { lines(log).filter { $0.hasPrefix("start ") }.count >= 3 }
        supervisor.kill(SIGTERM)
        let result = supervisor.wait()
        #expect(threeStarts, "\(result.brief)")
        #expect(result.status == 0, "\(result.brief)")
        let entries = lines(log)
        let starts = entries.filter { $0.hasPrefix("start ") }.map { $0.split(separator: " ").map(String.init) }
        #expect(starts.count == 3, "restarted after the supervisor was told to stop")
        #expect(starts.allSatisfy { $0.count == 4 && $0[2] == "same" }, "a child's environment and token file disagreed")
        #expect(Set(starts.map { $0.count == 4 ? $0[3] : "" }).count == 3, "a restart did not bring a new token")
        #expect(Set(starts.map { $0[1] }).count == 3, "the same process was reported twice")
        // Every child was asked to stop with SIGTERM before the next started.
        #expect(entries.map { $0.hasPrefix("start ") ? "start" : $0 } == ["start", "TERM", "start", "TERM", "start", "TERM"])
        #expect(tokenFolders(sandbox).isEmpty)
    }

    /// A child that ignores SIGTERM is killed after the grace period, and
    /// started again all the same.
    @Test func restartKillsAChildThatIgnoresTerm() async throws {
        let (sandbox, emulator) = try await loggedIn(appTokenTTL: 4)
        defer { _ = emulator.stop() }
        let log = sandbox.path("starts")
        let script = """
            trap '' TERM
            echo $$ >> "$LOG"
            while :; do sleep 0.1; done
            """
        let supervisor = try sandbox.launch(["exec", "--keep-fresh", "--on-renew", "restart", "--min-ttl", "2s", "--", shell, "-c", script],
            env: ["LOG": log, "TALLYFY_VAULT_TEST_STOP_GRACE": "0.5"])
        defer { supervisor.kill() }
        #expect(ProcView.waitUntil(seconds: 30) { lines(log).count >= 2 })
        let pids = lines(log).compactMap { Int32($0) }
        #expect(ProcView.waitUntil(seconds: 5) { isGone(pids[0]) }, "the first child survived its restart")
        // It ignores TERM, so only KILL ends it; the supervisor goes with it.
        kill(pids.last!, SIGKILL)
        let result = supervisor.wait()
        #expect(result.status == 128 + SIGKILL, "\(result.brief)")
        #expect(tokenFolders(sandbox).isEmpty)
    }

    /// User tokens are kept fresh the same way, through the application token.
    @Test func aUserTokenIsKeptFresh() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        try sandbox.ok(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"])
        try await emulator.setLifetimes(user: 4)
        let log = sandbox.path("hups")
        let script = """
            n=0
            trap 'n=$((n+1)); printf "%s\\n" "$(cat "$TALLYFY_TOKEN_FILE")" >> "$LOG"; [ "$n" -ge 2 ] && exit 0' HUP
            while :; do sleep 0.1; done
            """
        let result = try sandbox.run(["exec", "--keep-fresh", "--user", "ann@example.com", "--on-renew", "signal:HUP", "--min-ttl", "2s",
            "--", shell, "-c", script], env: ["LOG": log])
        #expect(result.status == 0, "\(result.brief)")
        let tokens = lines(log)
        #expect(tokens.count == 2 && Set(tokens).count == 2)
        if let last = tokens.last {
            let me = try await emulator.send(.GET, "/api/organizations/org-test/me",
                headers: ["Authorization": "Bearer \(last)", "X-Tallyfy-Client": "APIClient"])
            #expect(me.json["email"] as? String == "ann@example.com")
        }
        // The first one issued at start, then one per renewal; the week-long
        // application token was never renewed.
        #expect(try await emulator.counts()["users.token"] == 3)
        #expect(try await emulator.counts()["token"] == 1)
    }

    /// With a passphrase the supervisor derives the key again at each
    /// renewal: it keeps none while it waits.
    @Test func aPassphraseIsUsedAgainAtEachRenewalAndNoKeyIsKept() async throws {
        let emulator = try await Emulator.start(clients: [("client-test", secret)], appTokenTTL: 4)
        defer { _ = emulator.stop() }
        let sandbox = try Sandbox()
        let runtime = sandbox.path("run")
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        sandbox.environment["XDG_RUNTIME_DIR"] = runtime
        let passphrase = "pp-\(UUID().uuidString)"
        sandbox.environment["TALLYFY_VAULT_PASSPHRASE"] = passphrase
        try sandbox.ok(["init"])
        try sandbox.storeCredentials(for: emulator, secret: secret)
        try sandbox.ok(["login"])
        let log = sandbox.path("hups")
        let kdfLog = sandbox.path("kdf")
        let script = """
            n=0
            trap 'n=$((n+1)); echo renewed >> "$LOG"; [ "$n" -ge 2 ] && exit 0' HUP
            while :; do sleep 0.1; done
            """
        let result = try sandbox.run(["exec", "--keep-fresh", "--on-renew", "signal:HUP", "--min-ttl", "2s", "--", shell, "-c", script],
            env: ["LOG": log, "TALLYFY_VAULT_TEST_KDF_LOG": kdfLog])
        #expect(result.status == 0, "\(result.brief)")
        #expect(lines(log).count == 2)
        // One derivation at start, one per renewal.
        #expect(lines(kdfLog) == ["argon2id", "argon2id", "argon2id"])
        #expect(!result.stderr.contains(passphrase))
    }

    /// The supervisor holds a token (and, at renewal, a key) for the child's
    /// whole life: it stays non-dumpable with core dumps off, while the child
    /// is an ordinary process. As in LeakTests, this runs as `nobody`, since
    /// to root every `/proc` file belongs to root anyway.
    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")))
    func theSupervisorIsNotDumpableAndTheChildIsOrdinary() async throws {
        let nobody: uid_t = 65534
        let emulator = try await Emulator.start(clients: [("client-test", secret)])
        defer { _ = emulator.stop() }
        let sandbox = try Sandbox()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("tv-nobody-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(at: folder) }
        let runtime = folder.appendingPathComponent("run")
        try FileManager.default.createDirectory(at: runtime, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        sandbox.environment["TALLYFY_VAULT_FILE"] = folder.appendingPathComponent("vault").path
        sandbox.environment["TALLYFY_VAULT_PASSPHRASE"] = "pp-\(UUID().uuidString)"
        sandbox.environment["HOME"] = folder.path
        sandbox.environment["XDG_RUNTIME_DIR"] = runtime.path
        try sandbox.ok(["init"])
        try sandbox.storeCredentials(for: emulator, secret: secret)
        try sandbox.ok(["login"])
        for path in [folder.path, runtime.path] + filesBelow(folder).map(\.path) {
            #expect(chown(path, nobody, gid_t(nobody)) == 0)
        }
        let binaries = FileManager.default.temporaryDirectory.appendingPathComponent("tv-nobody-bin-\(UUID().uuidString)")
        let launcher = try BuildProducts.copy(into: binaries)
        defer { try? FileManager.default.removeItem(at: binaries) }
        let pidFile = folder.appendingPathComponent("child.pid").path
        let supervisor = try BackgroundCommand(URL(fileURLWithPath: "/usr/bin/setpriv"),
            ["--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups", "/bin/sh", "-c",
             "ulimit -c unlimited && exec \"$0\" \"$@\"", launcher.path,
             "exec", "--keep-fresh", "--", shell, "-c", "echo $$ > \"$PIDFILE\"; while :; do sleep 0.1; done"],
            environment: sandbox.environment.merging(["PIDFILE": pidFile]) { $1 }, in: folder)
        defer { supervisor.kill() }
        #expect(ProcView.waitUntil(seconds: 90) { pid(in: pidFile) != nil }, "\(supervisor.isRunning ? "running" : supervisor.wait().brief)")
        let child = try #require(pid(in: pidFile))
        #expect(ProcView.owner(pid: supervisor.pid) == 0, "the supervisor is dumpable")
        #expect(ProcView.owner(pid: supervisor.pid, file: "environ") == 0)
        #expect(ProcView.coreLimit(pid: supervisor.pid)?.soft == "0")
        #expect(ProcView.owner(pid: child) == nobody, "the child is not dumpable")
        #expect(ProcView.coreLimit(pid: child)?.soft == "unlimited", "the child's core limit was not restored")
        supervisor.kill(SIGTERM)
        #expect(supervisor.wait().status == 128 + SIGTERM)
    }

    @Test func theChildsStatusIsTheStatusAndTheFileGoesWithIt() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        let check = """
            [ "$(cat "$TALLYFY_TOKEN_FILE")" = "$TALLYFY_TOKEN" ] || exit 90
            [ "$(stat -c %a "$TALLYFY_TOKEN_FILE")" = 600 ] || exit 91
            [ "$(stat -c %a "$(dirname "$TALLYFY_TOKEN_FILE")")" = 700 ] || exit 92
            case "$TALLYFY_TOKEN_FILE" in "$XDG_RUNTIME_DIR"/tallyfy-vault/exec-*/token) ;; *) exit 93 ;; esac
            [ -n "$TALLYFY_VAULT_EXEC" ] || exit 94
            exit "$1"
            """
        for status in [0, 42] {
            let result = try sandbox.run(["exec", "--keep-fresh", "--", shell, "-c", check, "sh", String(status)])
            #expect(result.status == Int32(status), "\(result.brief)")
            #expect(tokenFolders(sandbox).isEmpty)
        }
        let killed = try sandbox.run(["exec", "--keep-fresh", "--", shell, "-c", "kill -KILL $$"])
        #expect(killed.status == 128 + SIGKILL, "\(killed.brief)")
        let missing = try sandbox.run(["exec", "--keep-fresh", "--", "no-such-command-\(UUID().uuidString)"])
        #expect(missing.status == 127, "\(missing.brief)")
        #expect(tokenFolders(sandbox).isEmpty)
        #expect(try await emulator.counts()["token"] == 1, "a fresh token was renewed")
        // A plain exec (the launcher's fast path, and the full CLI when it
        // renews) drops a token file inherited from an outer supervisor: it
        // would name another token.
        for arguments in [["exec", "--", "printenv", "TALLYFY_TOKEN_FILE"], ["exec", "--min-ttl", "30d", "--", "printenv", "TALLYFY_TOKEN_FILE"]] {
            let plain = try sandbox.run(arguments, env: ["TALLYFY_TOKEN_FILE": "/elsewhere/token"])
            #expect(plain.status == 1 && plain.stdout.isEmpty, "\(arguments): \(plain.brief)")
        }
        #expect(try await emulator.counts()["token"] == 2, "the second one did not go through the full CLI")
    }

    @Test func signalsAreForwardedToTheChild() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        let log = sandbox.path("signals")
        let pidFile = sandbox.path("child.pid")
        let script = """
            trap 'echo INT >> "$LOG"' INT
            trap 'echo USR1 >> "$LOG"' USR1
            trap 'echo TERM >> "$LOG"; exit 7' TERM
            echo $$ > "$PIDFILE"
            while :; do sleep 0.1; done
            """
        let supervisor = try sandbox.launch(["exec", "--keep-fresh", "--", shell, "-c", script], env: ["LOG": log, "PIDFILE": pidFile])
        defer { supervisor.kill() }
        #expect(ProcView.waitUntil(seconds: 90) { pid(in: pidFile) != nil })
        // The supervisor keeps core dumps off for its whole life.
        #expect(ProcView.coreLimit(pid: supervisor.pid)?.soft == "0")
        supervisor.kill(SIGINT)
        #expect(ProcView.waitUntil(seconds: 10) { lines(log) == ["INT"] }, "\(lines(log))")
        supervisor.kill(SIGUSR1)
        #expect(ProcView.waitUntil(seconds: 10) { lines(log) == ["INT", "USR1"] }, "\(lines(log))")
        #expect(supervisor.isRunning)
        supervisor.kill(SIGTERM)
        let result = supervisor.wait()
        #expect(result.status == 7, "\(result.brief)")
        #expect(lines(log) == ["INT", "USR1", "TERM"])
        #expect(tokenFolders(sandbox).isEmpty)
    }

    /// A ^C typed at the terminal reaches the whole foreground process group,
    /// child included: the supervisor must not pass it on a second time. A
    /// child that moved to a session of its own (`setsid`) is out of the
    /// terminal's reach: then the supervisor passes it on, so ^C still works.
    /// `script` gives the command a terminal; the test types ^C into it.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script")
        && FileManager.default.isExecutableFile(atPath: "/usr/bin/setsid")), arguments: [false, true])
    func aControlCFromTheTerminalReachesTheChildOnce(ownSession: Bool) async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        let log = sandbox.path("signals")
        let child = try sandbox.write("""
            trap 'echo INT >> "$LOG"' INT
            trap 'echo USR1 >> "$LOG"' USR1
            echo $PPID > "$LOG.supervisor"
            echo ready >> "$LOG"
            while :; do sleep 0.1; done
            """, to: "child.sh")
        let command = (ownSession ? "/usr/bin/setsid " : "") + "/bin/sh \(child)"
        detachedFromTerminal
        let terminal = Process()
        terminal.executableURL = URL(fileURLWithPath: "/usr/bin/script")
        terminal.arguments = ["-qfec", "exec \(BuildProducts.vault.path) exec --keep-fresh -- \(command)", "/dev/null"]
        terminal.environment = sandbox.environment.merging(["LOG": log]) { $1 }
        let keyboard = Pipe()
        terminal.standardInput = keyboard
        terminal.standardOutput = FileHandle.nullDevice
        terminal.standardError = FileHandle.nullDevice
        try terminal.run()
        defer { if terminal.isRunning { terminal.terminate() } }
        #expect(ProcView.waitUntil(seconds: 60) { lines(log) == ["ready"] })
        let supervisor = try #require(pid(in: log + ".supervisor"))
        keyboard.fileHandleForWriting.write(Data([0x03]))
        #expect(ProcView.waitUntil(seconds: 10) { lines(log).contains("INT") }, "the child never saw the ^C")
        // A forwarded signal behind it, so a second INT would show before it.
        kill(supervisor, SIGUSR1)
        #expect(ProcView.waitUntil(seconds: 10) { lines(log).contains("USR1") })
        #expect(lines(log) == ["ready", "INT", "USR1"], "the child got the terminal's ^C twice")
        kill(supervisor, SIGTERM)
        terminal.waitUntilExit()
        #expect(tokenFolders(sandbox).isEmpty)
    }

    @Test func aKilledSupervisorTakesItsChildAlongAndItsFolderIsCleanedNextTime() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        let pidFile = sandbox.path("child.pid")
        let supervisor = try sandbox.launch(["exec", "--keep-fresh", "--", shell, "-c", "echo $$ > \"$PIDFILE\"; while :; do sleep 0.1; done"],
            env: ["PIDFILE": pidFile])
        #expect(ProcView.waitUntil(seconds: 90) { pid(in: pidFile) != nil })
        let child = try #require(pid(in: pidFile))
        let folders = tokenFolders(sandbox)
        #expect(folders.count == 1 && FileManager.default.fileExists(atPath: folders[0] + "/token"))
        supervisor.kill(SIGKILL)
        #expect(supervisor.wait().status == 128 + SIGKILL)
        #expect(ProcView.waitUntil(seconds: 10) { isGone(child) }, "the child outlived its supervisor")
        #expect(tokenFolders(sandbox) == folders, "nothing could have removed it yet")
        // The next supervisor clears what the killed one left.
        try sandbox.ok(["exec", "--keep-fresh", "--", "true"])
        #expect(tokenFolders(sandbox).isEmpty)
    }

    @Test func withTallyfyDownTheChildKeepsTheValidTokenThenGetsANewOne() async throws {
        let (sandbox, emulator) = try await loggedIn(appTokenTTL: 12)
        defer { _ = emulator.stop() }
        let pidFile = sandbox.path("child.pid")
        let supervisor = try sandbox.launch(["exec", "--keep-fresh", "--min-ttl", "6s", "--", shell, "-c",
            "echo \"$TALLYFY_TOKEN_FILE\" > \"$PIDFILE\"; while :; do sleep 0.2; done"], env: ["PIDFILE": pidFile])
        defer { supervisor.kill() }
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "status", status: 503))
        #expect(ProcView.waitUntil(seconds: 60) { contents(pidFile)?.hasSuffix("\n") == true })
        let tokenFile = try #require(contents(pidFile)?.trimmingCharacters(in: .whitespacesAndNewlines))
        let first = try #require(contents(tokenFile))
        #expect(ProcView.waitUntil(seconds: 60) { supervisor.stderrSoFar.contains("could not renew") }, "\(supervisor.stderrSoFar)")
        #expect(contents(tokenFile) == first, "the file changed while Tallyfy was down")
        #expect(try await accepted(first, by: emulator), "the token kept during the outage is not valid")
        try await emulator.clearFaults()
        #expect(ProcView.waitUntil(seconds: 60) { (contents(tokenFile) ?? first) != first })
        let renewed = try #require(contents(tokenFile))
        #expect(try await accepted(renewed, by: emulator))
        supervisor.kill(SIGTERM)
        let result = supervisor.wait()
        #expect(result.status == 128 + SIGTERM, "\(result.brief)")
        let failures = result.stderr.split(separator: "\n")
        #expect(!failures.isEmpty && failures.allSatisfy { $0.hasPrefix("tallyfy-vault: could not renew the application token") }, "\(result.stderr)")
        #expect(!result.stderr.contains(secret) && !result.stderr.contains(first) && !result.stderr.contains(renewed))
    }

    @Test func onExpiryStopStopsTheChildAndExits69() async throws {
        // 8 s: the token must still have its 2 s when `exec` starts, however
        // slowly a loaded machine gets there (with 4 s it once had not).
        let (sandbox, emulator) = try await loggedIn(appTokenTTL: 8)
        defer { _ = emulator.stop() }
        let pidFile = sandbox.path("child.pid")
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "status", status: 503))
        let result = try sandbox.run(["exec", "--keep-fresh", "--on-expiry", "stop", "--min-ttl", "2s", "--", shell, "-c",
            "echo $$ > \"$PIDFILE\"; while :; do sleep 0.1; done"], env: ["PIDFILE": pidFile])
        #expect(result.status == 69, "\(result.brief)")
        #expect(result.stderr.contains("could not renew"))
        #expect(result.stderr.contains("expired at") && result.stderr.contains("--on-expiry stop"), "\(result.stderr)")
        #expect(!result.stderr.contains(secret))
        let child = try #require(pid(in: pidFile))
        #expect(ProcView.waitUntil(seconds: 5) { isGone(child) })
        #expect(tokenFolders(sandbox).isEmpty)
    }

    @Test func misuseIsRefusedBeforeAnythingStarts() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        let marker = sandbox.path("ran")
        let command = [shell, "-c", "touch \"$1\"", "sh", marker]
        for (arguments, text) in [
            (["exec", "--keep-fresh", "--on-renew", "sometimes", "--"], "is not one of none, signal:NAME, restart"),
            (["exec", "--keep-fresh", "--on-renew", "signal:BOGUS", "--"], "is not one of none, signal:NAME, restart"),
            // Issue 24 F12: no reload, so the first renewal (days in) would end or freeze the command.
            (["exec", "--keep-fresh", "--on-renew", "signal:KILL", "--"], "would stop the command at its first renewal"),
            (["exec", "--keep-fresh", "--on-renew", "signal:SIGSTOP", "--"], "--on-renew restart"),
            (["exec", "--keep-fresh", "--on-renew", "signal:PIPE", "--"], "would stop the command at its first renewal"),
            (["exec", "--keep-fresh", "--on-renew", "signal:segv", "--"], "would stop the command at its first renewal"),
            (["exec", "--keep-fresh", "--on-renew", "signal:TERM", "--"], "would stop the command at its first renewal"),
            (["exec", "--keep-fresh", "--on-expiry", "later", "--"], "is not one of keep, stop"),
            (["exec", "--on-renew", "restart", "--"], "only with --keep-fresh"),
            (["exec", "--keep-fresh", "--no-refresh", "--"], "--no-refresh"),
        ] {
            let result = try sandbox.refused(arguments + command, status: 64)
            #expect(result.stderr.contains(text), "\(arguments): \(result.stderr)")
        }
        // A passphrase typed at a prompt can't be typed again at renewal time.
        let noSource = try sandbox.refused(["exec", "--keep-fresh", "--"] + command, status: 78, env: ["TALLYFY_VAULT_KEY_FILE": ""])
        #expect(noSource.stderr.contains("--key-file or --passphrase-file"), "\(noSource.stderr)")
        #expect(!FileManager.default.fileExists(atPath: marker))
        let help = try sandbox.ok(["exec", "--help"])
        #expect(help.stdout.contains("--keep-fresh") && help.stdout.contains("TALLYFY_TOKEN_FILE"))
    }

    /// The launcher's hand-written fast path knows nothing of supervising:
    /// any `exec` with these options must reach the full CLI.
    @Test func theFastPathNeverTakesKeepFresh() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        let alone = try BuildProducts.copy(into: sandbox.root.appendingPathComponent("alone"), withCLI: false)
        for arguments in [
            ["exec", "--keep-fresh", "--", "true"],
            ["exec", "--min-ttl", "1m", "--keep-fresh", "--", "true"],
            ["exec", "--keep-fresh", "--on-renew", "signal:HUP", "--", "true"],
            ["exec", "--on-expiry=stop", "--keep-fresh", "--", "true"],
            ["--profile", "default", "exec", "--keep-fresh", "--on-renew=restart", "--", "true"],
        ] {
            let result = try runProcess(alone, arguments, environment: sandbox.environment)
            #expect(result.status == 78 && result.stderr.contains("the full command-line tool is not installed"),
                "the fast path took \(arguments): \(result.brief)")
        }
    }
}

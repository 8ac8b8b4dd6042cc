import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Secrets stay where they belong: every command, successful or failing, is
/// run with unique client secrets, passphrases and tokens, and none of them
/// may show up where it should not (output, files beside the vault, the
/// child's environment or arguments, a core dump).
@Suite struct LeakTests {
    let client = "client-test"

    /// One command's outcome, and whether printing a token is its job.
    private struct Outcome {
        var label: String
        var result: RunResult
        var printsTokens: Bool
    }

    /// Runs everything, records every output, and checks them all at the end
    /// against every token seen during the run.
    @Test func noCommandLeaksASecretAnywhere() async throws {
        let secret = "cs-\(UUID().uuidString)"
        let newSecret = "cs-new-\(UUID().uuidString)"
        let wrongSecret = "cs-wrong-\(UUID().uuidString)"
        let passphrase = "pp-\(UUID().uuidString)"
        let secondPassphrase = "pp-2-\(UUID().uuidString)"
        let wrongPassphrase = "pp-wrong-\(UUID().uuidString)"
        var needles = Needles(secrets: [
            "client secret": secret, "new client secret": newSecret, "wrong client secret": wrongSecret,
            "passphrase": passphrase, "second passphrase": secondPassphrase, "wrong passphrase": wrongPassphrase,
        ])

        let emulator = try await Emulator.start(clients: [(client, secret), (client, newSecret)])
        defer { _ = emulator.stop() }
        let sandbox = try Sandbox()
        // The vault in a folder of its own, so everything in it can be searched;
        // the passphrase files the test writes stay outside it.
        let vaultFolder = sandbox.root.appendingPathComponent("vault-folder")
        sandbox.environment["TALLYFY_VAULT_FILE"] = vaultFolder.appendingPathComponent("vault").path
        let secondVault = vaultFolder.appendingPathComponent("second").path
        let passFile = try sandbox.write(passphrase + "\n", to: "pass")
        let secondPassFile = try sandbox.write(secondPassphrase + "\n", to: "pass-2")
        let wrongPassFile = try sandbox.write(wrongPassphrase + "\n", to: "pass-wrong")
        let keyFile = sandbox.path("key")
        let email = "leak-\(UUID().uuidString.prefix(8).lowercased())@example.com"

        var outcomes: [Outcome] = []
        @discardableResult
        func run(_ arguments: [String], stdin: String? = nil, env: [String: String] = [:], status: Int32? = 0,
            printsTokens: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) throws -> RunResult {
            let result = try sandbox.run(arguments, stdin: stdin, env: env)
            if let status {
                #expect(result.status == status, "\(arguments.joined(separator: " ")): \(result.brief)", sourceLocation: sourceLocation)
            }
            outcomes.append(Outcome(label: arguments.joined(separator: " "), result: result, printsTokens: printsTokens))
            return result
        }
        /// Learns the tokens sealed now (printing them is `token`'s job).
        func learnTokens(user: Bool) throws {
            var commands = [["token", "--no-refresh"]]
            if user { commands.append(["token", "--no-refresh", "--user", email]) }
            for command in commands {
                let token = try run(command, printsTokens: true).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(!token.isEmpty)
                needles.tokens.insert(token)
            }
        }

        // init: passphrase from the variable, and from a file.
        try run(["init"], env: ["TALLYFY_VAULT_PASSPHRASE": passphrase])
        try run(["init", "--passphrase-file", passFile], env: ["TALLYFY_VAULT_FILE": secondVault])
        try run(["credentials", "show", "--passphrase-file", passFile], env: ["TALLYFY_VAULT_FILE": secondVault], status: 78)
        sandbox.environment["TALLYFY_VAULT_PASSPHRASE"] = passphrase

        // keys
        try run(["keygen", keyFile])
        try run(["keys", "add", "--new-passphrase-file", secondPassFile, "--label", "second"])
        try run(["keys", "add", "--new-key-file", keyFile, "--label", "kf"])
        try run(["keys", "list"])
        try run(["keys", "remove", "kf"])

        // credentials, login, tokens in every format
        try run(["credentials", "set", "--org", "org-test", "--client-id", client, "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: secret + "\n")
        try run(["credentials", "show"])
        try run(["login"])
        try learnTokens(user: false)
        for format in ["raw", "json", "helper"] { try run(["token", "--format", format], printsTokens: true) }

        // users
        try run(["users", "create", "--email", email, "--first-name", "Lee", "--last-name", "Kay"])
        try run(["users", "token", email])
        try learnTokens(user: true)
        try run(["users", "list"])
        for format in ["raw", "json", "helper"] { try run(["token", "--user", email, "--format", format], printsTokens: true) }

        // exec and export: the tokens are the point, in the child and in the printout
        try run(["exec", "--", "true"])
        try run(["exec", "--user", email, "--", "true"])
        try run(["--passphrase-file", secondPassFile, "exec", "--", "true"], env: ["TALLYFY_VAULT_PASSPHRASE": ""])
        // Global options may follow `exec` too, before the `--`.
        try run(["exec", "--passphrase-file", secondPassFile, "--", "true"], env: ["TALLYFY_VAULT_PASSPHRASE": ""])
        for format in ["sh", "dotenv", "json"] {
            try run(["export", "--format", format], printsTokens: true)
            try run(["export", "--user", email, "--format", format], printsTokens: true)
        }

        // rotate-secret, then the new token
        try run(["rotate-secret", "--secret-stdin"], stdin: newSecret)
        try learnTokens(user: true)
        try await emulator.setSecrets(client: client, secrets: [newSecret])

        // check and status, with and without unlocking
        for format in ["text", "json", "prometheus"] {
            try run(["check", "--format", format], env: ["TALLYFY_VAULT_PASSPHRASE": ""], status: nil)
            try run(["check", "--format", format, "--secret-max-age", "1s"], status: nil)
        }
        try run(["check", "--refresh", "--warn-before", "30d"], status: nil)
        try learnTokens(user: true)
        try run(["check", "--output", sandbox.path("check.prom"), "--format", "prometheus"], status: nil)
        for format in ["text", "json"] { try run(["status", "--format", format]) }
        // doctor reads everything and, with --login, sends the secret: still nothing shown.
        for format in ["text", "json"] {
            try run(["doctor", "--format", format], status: nil)
            try run(["doctor", "--login", "--format", format], status: nil)
        }

        // rekey needs every slot's key: the variable and the second passphrase's file
        try run(["rekey", "--passphrase-file", secondPassFile])
        try run(["token", "--no-refresh"], printsTokens: true)

        // failing variants
        try run(["token"], env: ["TALLYFY_VAULT_PASSPHRASE": wrongPassphrase], status: 77)
        try run(["credentials", "show", "--passphrase-file", wrongPassFile], env: ["TALLYFY_VAULT_PASSPHRASE": ""], status: 77)
        try run(["exec", "--", "true"], env: ["TALLYFY_VAULT_PASSPHRASE": wrongPassphrase], status: 77)
        try run(["rotate-secret", "--secret-stdin"], stdin: wrongSecret, status: 77)
        try run(["--profile", "wrong", "credentials", "set", "--org", "org-test", "--client-id", client, "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: wrongSecret)
        try run(["--profile", "wrong", "login"], status: 77)
        try run(["--profile", "wrong", "token"], status: 77)
        try run(["--profile", "wrong", "check", "--refresh"], status: nil)
        try run(["--profile", "wrong", "credentials", "set", "--org", "org-test", "--client-id", client, "--secret-stdin",
            "--token-url", "ftp://example.com/token"], stdin: wrongSecret, status: 64)
        try run(["users", "token", "nobody-\(UUID().uuidString.prefix(6))@example.com"], status: nil)
        try run(["users", "forget", email])
        try run(["users", "forget", email], status: 64)
        try run(["keys", "remove", "second"])
        try run(["credentials", "remove", "--profile", "wrong"])

        // The exec child: its arguments exactly, the token only where it belongs.
        let argv = ["/bin/sh", "-c", "cat /proc/$$/cmdline; printf '\\036'; env", "sh", "arg one", "--flag", "", "$HOME"]
        let child = try run(["exec", "--"] + argv, printsTokens: true)
        let parts = child.stdout.split(separator: "\u{1e}", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        #expect(parts.count == 2)
        #expect(parts.first == argv.map { $0 + "\u{0}" }.joined(), "the child's argv is not exactly the one given")
        let environment = parts.count == 2 ? parts[1] : ""
        for line in environment.split(separator: "\n").map(String.init) {
            let name = String(line.prefix { $0 != "=" })
            #expect(needles.secretsIn(line).isEmpty, "the child's \(name) holds \(needles.secretsIn(line))")
            if needles.tokenCount(in: line) > 0 {
                #expect(["TALLYFY_TOKEN", "TALLYFY_API_TOKEN"].contains(name), "the child's \(name) holds a token")
            }
        }
        #expect(!environment.contains("TALLYFY_VAULT_PASSPHRASE="), "the passphrase variable reached the child")
        #expect(environment.contains("TALLYFY_TOKEN="))

        // Every output: no secret ever, tokens only from the commands that print them.
        #expect(needles.tokens.count >= 4, "too few tokens seen for the test to mean anything")
        for outcome in outcomes {
            let text = outcome.result.stdout + "\n" + outcome.result.stderr
            #expect(needles.secretsIn(text).isEmpty, "`\(outcome.label)` printed \(needles.secretsIn(text))")
            if !outcome.printsTokens {
                #expect(needles.tokenCount(in: text) == 0, "`\(outcome.label)` printed a token")
            }
            #expect(needles.tokenCount(in: outcome.result.stderr) == 0, "`\(outcome.label)` wrote a token to stderr")
        }

        // Every file in the vault's folder: the vaults, the lock files, any leftover.
        let files = filesBelow(vaultFolder)
        #expect(files.contains { $0.lastPathComponent == "vault.lock" })
        #expect(files.count >= 3)
        for file in files {
            let found = needles.found(in: try Data(contentsOf: file))
            #expect(found.secrets.isEmpty, "\(file.lastPathComponent) holds \(found.secrets)")
            #expect(found.tokens == 0, "\(file.lastPathComponent) holds \(found.tokens) token(s)")
        }
        let prometheus = needles.found(in: try Data(contentsOf: URL(fileURLWithPath: sandbox.path("check.prom"))))
        #expect(prometheus.secrets.isEmpty && prometheus.tokens == 0, "the check's output file holds a secret or token")
    }

    /// A process holding secrets can't be dumped or read by its user's other
    /// processes; the `exec` child is an ordinary process again.
    ///
    /// `PR_GET_DUMPABLE` reads only the caller's own flag, and tests run as
    /// root, to whom every process's `/proc` files belong anyway. So the tool
    /// runs as `nobody` here (setpriv): the kernel gives the `/proc/PID` files
    /// of a non-dumpable process to root, and those of a dumpable one to its
    /// user. The core limit is raised first (`ulimit -c unlimited`) so that
    /// the 0 seen in `/proc/PID/limits` is the tool's doing.
    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")))
    func aProcessHoldingSecretsIsNotDumpable() async throws {
        let secret = "cs-\(UUID().uuidString)"
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let world = try NobodysVault(emulator: emulator, client: client, secret: secret, kdf: nil)
        defer { world.remove() }
        let (vaultPath, nobody) = (world.vaultPath, NobodysVault.nobody)
        func asNobody(_ arguments: [String], env extra: [String: String] = [:]) throws -> BackgroundCommand {
            try world.run(arguments, env: extra)
        }

        // A write waiting for the lock has unlocked nothing yet, but has
        // already hardened itself (before any secret is read).
        let lock = try VaultLockHolder(vaultPath: vaultPath)
        let waiting = try asNobody(["users", "forget", "x@example.com"], env: ["TALLYFY_VAULT_LOCK_TIMEOUT": "20"])
        defer { waiting.kill() }
        let pid = waiting.pid
        let hardened = ProcView.waitUntil(seconds: 10) {
            // The launcher, or tallyfy-vault-cli once it has handed over.
            (ProcView.command(pid: pid) ?? "").hasPrefix("tallyfy-vault") && ProcView.coreLimit(pid: pid)?.soft == "0"
                && ProcView.owner(pid: pid) == 0
        }
        #expect(waiting.isRunning, "the writer did not wait for the lock")
        #expect(hardened, "not hardened: \(ProcView.command(pid: pid) ?? "?"), core \(String(describing: ProcView.coreLimit(pid: pid))), /proc owner \(String(describing: ProcView.owner(pid: pid)))")
        #expect(ProcView.coreLimit(pid: pid)?.soft == "0", "RLIMIT_CORE is not 0")
        #expect(ProcView.coreLimit(pid: pid)?.hard == "unlimited", "the hard core limit was changed")
        #expect(ProcView.owner(pid: pid) == 0, "the process is dumpable: its /proc files belong to its user")
        #expect(ProcView.owner(pid: pid, file: "environ") == 0)
        lock.release()
        let forgot = waiting.wait()
        #expect(forgot.status == 64, "\(forgot.brief)")  // nothing sealed for x@example.com

        // The exec child is an ordinary process: dumpable, its core limit back.
        let child = try asNobody(["exec", "--", "sleep", "20"])
        defer { child.kill() }
        let childPid = child.pid
        // comm changes early in execve, the arguments a moment later.
        let replaced = ProcView.waitUntil(seconds: 10) {
            ProcView.command(pid: childPid) == "sleep" && ProcView.arguments(pid: childPid)?.isEmpty == false
        }
        #expect(replaced, "exec did not replace the process: \(child.isRunning ? "running" : child.wait().brief)")
        if replaced {
            #expect(ProcView.owner(pid: childPid) == nobody, "the exec child is not dumpable")
            #expect(ProcView.coreLimit(pid: childPid)?.soft == "unlimited", "the exec child's core limit was not restored")
            #expect(ProcView.arguments(pid: childPid) == ["sleep", "20"])
        }
        child.kill()
        _ = child.wait()
    }

    /// Issue 9: every command that can unlock hardens itself before it
    /// decrypts, without having to remember to — `check` without `--refresh`
    /// included. The vault's only slot is a passphrase at the real `moderate`
    /// cost (the test hook off), so each command spends most of a second in
    /// Argon2id, long enough to be seen from outside while it unlocks.
    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")))
    func everyUnlockingCommandIsHardenedWhileItUnlocks() async throws {
        let secret = "cs-\(UUID().uuidString)"
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let world = try NobodysVault(emulator: emulator, client: client, secret: secret, kdf: "moderate")
        defer { world.remove() }
        let passphrase = world.passphrase
        let commands: [[String]] = [
            ["check"], ["check", "--format", "json"], ["credentials", "show"], ["token", "--no-refresh"],
            ["export", "--no-refresh"], ["users", "list"], ["exec", "--no-refresh", "--", "true"],
        ]
        for command in commands {
            let process = try world.run(command)
            defer { process.kill() }
            let pid = process.pid
            var seen = false
            _ = ProcView.waitUntil(seconds: 30) {
                seen = (ProcView.command(pid: pid) ?? "").hasPrefix("tallyfy-vault") && ProcView.owner(pid: pid) == 0
                    && ProcView.coreLimit(pid: pid)?.soft == "0" && process.isRunning
                return seen || !process.isRunning
            }
            let result = process.wait()
            #expect(seen, "\(command.joined(separator: " ")) unlocked without being hardened (or ended first): \(result.brief)")
            #expect(result.status == 0 || command.first == "check", "\(command.joined(separator: " ")): \(result.brief)")
            #expect(!(result.stdout + result.stderr).contains(secret) && !(result.stdout + result.stderr).contains(passphrase))
        }
    }
}

/// A passphrase vault in a folder that `nobody` owns, logged in against an
/// emulator, and copies of the binaries where `nobody` can run them (the
/// build folder may sit in a private home). Tests run the tool as `nobody`
/// because, run as root, every process's `/proc` files are root's anyway.
struct NobodysVault {
    static let nobody: uid_t = 65534
    let sandbox: Sandbox
    let folder: URL
    let binaries: URL
    let launcher: URL
    let passphrase = "pp-\(UUID().uuidString)"
    var vaultPath: String { folder.appendingPathComponent("vault").path }

    /// `kdf`: the real Argon2id level to use, or nil for the tests' cheap one.
    init(emulator: Emulator, client: String, secret: String, kdf: String?) throws {
        sandbox = try Sandbox()
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("tv-nobody-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        binaries = FileManager.default.temporaryDirectory.appendingPathComponent("tv-nobody-bin-\(UUID().uuidString)")
        launcher = try BuildProducts.copy(into: binaries)
        sandbox.environment["TALLYFY_VAULT_FILE"] = folder.appendingPathComponent("vault").path
        sandbox.environment["TALLYFY_VAULT_PASSPHRASE"] = passphrase
        sandbox.environment["HOME"] = folder.path
        if let kdf {
            sandbox.environment["TALLYFY_VAULT_TEST_KDF"] = nil
            try sandbox.ok(["init", "--kdf", kdf])
        } else {
            try sandbox.ok(["init"])
        }
        try sandbox.ok(["credentials", "set", "--org", "org-test", "--client-id", client, "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: secret)
        try sandbox.ok(["login"])
        for path in [folder.path] + filesBelow(folder).map(\.path) {
            #expect(chown(path, Self.nobody, gid_t(Self.nobody)) == 0)
        }
    }

    /// Runs the copied `tallyfy-vault` as `nobody`, its core limit raised
    /// first so that a 0 seen later is the tool's doing.
    func run(_ arguments: [String], env extra: [String: String] = [:]) throws -> BackgroundCommand {
        try BackgroundCommand(URL(fileURLWithPath: "/usr/bin/setpriv"),
            ["--reuid=\(Self.nobody)", "--regid=\(Self.nobody)", "--clear-groups", "/bin/sh", "-c",
             "ulimit -c unlimited && exec \"$0\" \"$@\"", launcher.path] + arguments,
            environment: sandbox.environment.merging(extra) { $1 }, in: folder)
    }

    func remove() {
        try? FileManager.default.removeItem(at: folder)
        try? FileManager.default.removeItem(at: binaries)
    }
}

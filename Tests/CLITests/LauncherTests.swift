import Foundation
import Testing

/// The `tallyfy-vault` launcher on its own and in the installed layout: it
/// serves the `exec` fast path by itself, finds the full CLI only from its
/// own resolved path (never the current folder), fails closed when it can't,
/// and never runs with a CLI of another release.
@Suite struct LauncherTests {
    let secret = "cs-\(UUID().uuidString)"

    private func loggedIn() async throws -> (Sandbox, Emulator) {
        let world = try await LoggedIn.start(secrets: [secret])
        return (world.sandbox, world.emulator)
    }

    /// Without the CLI reachable, only the fast path can answer: if it were
    /// dead, every spelling below would fail.
    @Test func theLauncherAloneServesTheFastPathAndFailsClosedOtherwise() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        let expected = try sandbox.ok(["exec", "--", "printenv", "TALLYFY_TOKEN"]).stdout
        // Nothing the launcher serves alone (masked or not) or refuses writes the vault.
        let before = try sandbox.vaultBytes()
        let alone = try BuildProducts.copy(into: sandbox.root.appendingPathComponent("alone"), withCLI: false)
        let environment = sandbox.environment
        func run(_ arguments: [String]) throws -> RunResult {
            try runProcess(alone, arguments, environment: environment)
        }
        let spellings: [[String]] = [
            ["exec", "--", "printenv", "TALLYFY_TOKEN"],
            ["--vault", sandbox.vaultPath, "exec", "--min-ttl", "1m", "--", "printenv", "TALLYFY_TOKEN"],
            ["exec", "--vault=\(sandbox.vaultPath)", "--min-ttl=1m", "--no-refresh", "--", "printenv", "TALLYFY_TOKEN"],
            ["exec", "--profile", "default", "--key-file", sandbox.keyPath, "--", "printenv", "TALLYFY_TOKEN"],
        ]
        for arguments in spellings {
            let result = try run(arguments)
            #expect(result.status == 0 && result.stdout == expected, "\(arguments): \(result.brief)")
        }
        // A masked exec with a fresh token is served here too: the command
        // runs as the launcher's child, its output through the masker.
        let printIt = ["sh", "-c", "echo \"t=$TALLYFY_TOKEN\"; exit 3"]
        let masked = try run(["exec", "--mask", "--"] + printIt)
        #expect(masked.status == 3 && masked.stdout == "t=<redacted>\n", "\(masked.brief)")
        let byVariable = try runProcess(alone, ["exec", "--"] + printIt, environment: environment.merging(["TALLYFY_VAULT_MASK": "1"]) { $1 })
        #expect(byVariable.status == 3 && byVariable.stdout == "t=<redacted>\n", "\(byVariable.brief)")
        let expectedCLI = sandbox.root.appendingPathComponent("alone/tallyfy-vault-cli").path
        for arguments in [["status"], ["exec", "--min-ttl", "30d", "--", "true"], ["exec", "--bogus", "--", "true"], ["version"]] {
            let result = try run(arguments)
            #expect(result.status == 78, "\(arguments): \(result.brief)")
            #expect(result.stderr.hasPrefix("tallyfy-vault: the full command-line tool is not installed"), "\(result.stderr)")
            #expect(result.stderr.contains(expectedCLI), "the message does not name \(expectedCLI): \(result.stderr)")
            #expect(result.stderr.contains("tools/install"))
        }
        #expect(try sandbox.vaultBytes() == before)
        #expect(try await emulator.counts()["token"] == 1, "a launcher alone must never renew")
    }

    /// A bare `tallyfy-vault` found on PATH never runs `./tallyfy-vault-cli`
    /// from the current folder.
    @Test func theCurrentFolderIsNeverSearched() async throws {
        let sandbox = try Sandbox()
        try BuildProducts.copy(into: sandbox.root.appendingPathComponent("bin"), withCLI: false)
        let trap = sandbox.root.appendingPathComponent("trap")
        try FileManager.default.createDirectory(at: trap, withIntermediateDirectories: false)
        let marker = sandbox.path("ran")
        _ = try sandbox.write("#!/bin/sh\ntouch '\(marker)'\n", to: "trap/tallyfy-vault-cli", mode: 0o755)
        var environment = sandbox.environment
        environment["PATH"] = sandbox.path("bin") + ":/usr/bin:/bin"
        let result = try runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "cd \"$1\" && exec tallyfy-vault status", "sh", trap.path],
            environment: environment)
        #expect(result.status == 78, "\(result.brief)")
        #expect(!FileManager.default.fileExists(atPath: marker), "the launcher ran ./tallyfy-vault-cli from the current folder")
    }

    /// `tools/install`'s layout: PREFIX/bin and PREFIX/libexec/tallyfy-vault.
    @Test func theInstalledLayoutWorksAndReportsItsVersions() async throws {
        let (sandbox, emulator) = try await loggedIn()
        defer { _ = emulator.stop() }
        let prefix = sandbox.root.appendingPathComponent("prefix")
        let launcher = try BuildProducts.copy(into: prefix.appendingPathComponent("bin"), withCLI: false)
        let libexec = prefix.appendingPathComponent("libexec/tallyfy-vault")
        try FileManager.default.createDirectory(at: libexec, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(
            at: libexec.appendingPathComponent("tallyfy-vault-cli"), withDestinationURL: BuildProducts.cli)
        let status = try runProcess(launcher, ["status"], environment: sandbox.environment)
        #expect(status.status == 0, "\(status.brief)")
        #expect(status.stdout.contains("default"))
        // Refreshing goes through the CLI in libexec.
        let renewed = try runProcess(launcher, ["exec", "--min-ttl", "8d", "--", "true"], environment: sandbox.environment)
        #expect(renewed.status == 0, "\(renewed.brief)")
        #expect(try await emulator.counts()["token"] == 2)

        for spelling in [["version"], ["--version"]] {
            let version = try runProcess(launcher, spelling, environment: sandbox.environment)
            #expect(version.status == 0, "\(version.brief)")
            let lines = version.stdout.split(separator: "\n").map(String.init)
            #expect(lines.first?.hasPrefix("tallyfy-vault ") == true, "\(version.stdout)")
            let release = String(lines.first?.dropFirst("tallyfy-vault ".count) ?? "")
            #expect(lines.contains("vault format: reads 1, 2, writes 1 (2 with a PKCS#11 key slot)"), "\(version.stdout)")
            #expect(lines.contains("launcher: \(release)"), "\(version.stdout)")
            #expect(lines.contains { $0.hasPrefix("cli: \(release) (") }, "\(version.stdout)")
        }
    }

    @Test func aCLIOfAnotherReleaseRefusesToRunUnderTheLauncher() throws {
        let sandbox = try Sandbox()
        let result = try runProcess(BuildProducts.cli, ["status"],
            environment: sandbox.environment.merging(["TALLYFY_VAULT_LAUNCHER_VERSION": "0.0.1-old"]) { $1 })
        #expect(result.status == 78, "\(result.brief)")
        #expect(result.stderr.hasPrefix("tallyfy-vault: the tallyfy-vault launcher is version 0.0.1-old but its tallyfy-vault-cli is version "),
            "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: sandbox.vaultPath))
    }

    /// `tools/install`'s layout, copied (not linked) as it installs it.
    private func installed(in sandbox: Sandbox) throws -> (launcher: URL, libexec: URL) {
        let prefix = sandbox.root.appendingPathComponent("prefix")
        let launcher = try BuildProducts.copy(into: prefix.appendingPathComponent("bin"), withCLI: false)
        let libexec = prefix.appendingPathComponent("libexec/tallyfy-vault")
        try FileManager.default.createDirectory(at: libexec, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        let cli = libexec.appendingPathComponent("tallyfy-vault-cli")
        try FileManager.default.copyItem(at: BuildProducts.cli, to: cli)
        chmod(cli.path, 0o755)
        return (launcher, libexec)
    }

    /// Issue 24 F7: a CLI folder (or one above it, up to the prefix) that
    /// others can write, or that another user owns, lets them swap the CLI:
    /// 78, naming the folder, and the vault untouched.
    @Test func aCLIFolderOthersCanWriteIsNotRun() throws {
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        let before = try sandbox.vaultBytes()
        let (launcher, libexec) = try installed(in: sandbox)
        try #require(try runProcess(launcher, ["version"], environment: sandbox.environment).status == 0)
        var cases: [(URL, () -> Void, () -> Void)] = [
            (libexec, { chmod(libexec.path, 0o775) }, { chmod(libexec.path, 0o755) }),
            (libexec, { chmod(libexec.path, 0o757) }, { chmod(libexec.path, 0o755) }),
            (libexec.deletingLastPathComponent(), { chmod(libexec.deletingLastPathComponent().path, 0o777) },
                { chmod(libexec.deletingLastPathComponent().path, 0o755) }),
        ]
        if getuid() == 0 {
            cases.append((libexec, { chown(libexec.path, 65534, 65534) }, { chown(libexec.path, 0, 0) }))
        }
        for (folder, open, close) in cases {
            open()
            let result = try runProcess(launcher, ["version"], environment: sandbox.environment)
            close()
            #expect(result.status == 78, "\(folder.path): \(result.brief)")
            #expect(result.stderr.hasPrefix("tallyfy-vault: refusing to run \(folder.path): "), "\(result.stderr)")
        }
        #expect(try sandbox.vaultBytes() == before)
        #expect(try runProcess(launcher, ["version"], environment: sandbox.environment).status == 0)
    }

    /// Issue 24 F7: the CLI is checked with lstat: a symbolic link another
    /// user owns is refused even when it points to a root-owned binary.
    @Test(.enabled(if: getuid() == 0))
    func aCLILinkOfAnotherUserIsNotRun() throws {
        let sandbox = try Sandbox()
        let (launcher, libexec) = try installed(in: sandbox)
        let cli = libexec.appendingPathComponent("tallyfy-vault-cli")
        try FileManager.default.removeItem(at: cli)
        try FileManager.default.createSymbolicLink(at: cli, withDestinationURL: BuildProducts.cli)
        #expect(try runProcess(launcher, ["version"], environment: sandbox.environment).status == 0)
        #expect(lchown(cli.path, 65534, 65534) == 0)
        let result = try runProcess(launcher, ["version"], environment: sandbox.environment)
        #expect(result.status == 78, "\(result.brief)")
        #expect(result.stderr.contains("refusing to run \(cli.path): it is a symbolic link that belongs to another user"), "\(result.stderr)")
    }

    /// Issue 24 F10: `doctor` run through tools/install's layout finds the
    /// launcher in PREFIX/bin and the CLI the launcher would run.
    @Test func doctorKnowsTheInstalledLayout() throws {
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        let (launcher, libexec) = try installed(in: sandbox)
        let result = try runProcess(launcher, ["doctor"], environment: sandbox.environment)
        #expect(!result.stdout.contains("FAIL install"), "\(result.stdout)")
        #expect(result.stdout.contains(launcher.path), "\(result.stdout)")
        #expect(result.stdout.contains(libexec.appendingPathComponent("tallyfy-vault-cli").path), "\(result.stdout)")
        // And says so when the launcher would refuse its CLI.
        chmod(libexec.path, 0o777)
        defer { chmod(libexec.path, 0o755) }
        let cli = try runProcess(libexec.appendingPathComponent("tallyfy-vault-cli"), ["doctor"], environment: sandbox.environment)
        #expect(cli.stdout.contains("the launcher refuses to run \(libexec.path)"), "\(cli.stdout)")
        #expect(cli.status == 2, "\(cli.brief)")
    }

    @Test func aCLIOthersCanWriteIsNotRun() throws {
        let sandbox = try Sandbox()
        let folder = sandbox.root.appendingPathComponent("bin")
        let launcher = try BuildProducts.copy(into: folder, withCLI: false)
        _ = try sandbox.write("#!/bin/sh\nexit 0\n", to: "bin/tallyfy-vault-cli", mode: 0o777)
        chmod(sandbox.path("bin/tallyfy-vault-cli"), 0o777)
        let result = try runProcess(launcher, ["status"], environment: sandbox.environment)
        #expect(result.status == 78, "\(result.brief)")
        #expect(result.stderr.contains("other users can write to it"), "\(result.stderr)")
    }
}

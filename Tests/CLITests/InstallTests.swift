import Foundation
import Testing

/// `tools/install` itself, on the products this test run built (`--from`, so
/// no release build): every file it promises lands, the man page renders
/// every command, the units name the prefix, and `--uninstall` removes
/// exactly what was installed.
@Suite struct InstallTests {
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let install = packageRoot.appendingPathComponent("tools/install")

    static let installed = [
        "bin/tallyfy-vault", "bin/tallyfy-emulator", "libexec/tallyfy-vault/tallyfy-vault-cli",
        "share/bash-completion/completions/tallyfy-vault", "share/zsh/site-functions/_tallyfy-vault",
        "share/fish/vendor_completions.d/tallyfy-vault.fish", "share/man/man1/tallyfy-vault.1",
        "share/tallyfy-vault/systemd/tallyfy-vault-agent.service", "share/tallyfy-vault/systemd/tallyfy-vault-check.service",
        "share/tallyfy-vault/systemd/tallyfy-vault-check.timer", "share/tallyfy-vault/systemd/user/tallyfy-vault-agent.service",
    ]

    @Test func installPutsEveryFileInThePrefixAndTheManPageRendersTheCommands() throws {
        let sandbox = try Sandbox()
        let prefix = sandbox.root.appendingPathComponent("prefix")
        let result = try runProcess(Self.install, ["--prefix", prefix.path, "--from", BuildProducts.directory.path],
            environment: sandbox.environment)
        #expect(result.status == 0, "\(result.brief)")
        #expect(!result.stderr.contains("warning"), "\(result.stderr)")
        for file in Self.installed {
            #expect(FileManager.default.fileExists(atPath: prefix.appendingPathComponent(file).path), "\(file) is missing")
        }

        let page = prefix.appendingPathComponent("share/man/man1/tallyfy-vault.1").path
        var environment = sandbox.environment
        environment["MANWIDTH"] = "200"
        environment["PATH"] = "/usr/bin:/bin"
        let man = try runProcess(URL(fileURLWithPath: "/usr/bin/man"), ["-P", "cat", "-l", page], environment: environment)
        #expect(man.status == 0, "\(man.brief)")
        #expect(!man.stderr.contains("warning"), "\(man.stderr)")
        let commands = ["init", "keygen", "keys", "rekey", "credentials", "login", "token", "users", "exec", "export",
            "rotate-secret", "check", "status", "doctor", "agent", "migrate", "version"]
        for command in commands {
            #expect(man.stdout.contains("tallyfy-vault \(command)\n"), "the man page has no section for \(command)")
        }
        for text in ["tallyfy-vault users create", "tallyfy-vault agent stop", "--secret-stdin", "--keep-fresh", "EXIT STATUS", "TALLYFY_VAULT_KEY_FILE"] {
            #expect(man.stdout.contains(text), "the man page does not mention \(text)")
        }

        let emulator = try runProcess(prefix.appendingPathComponent("bin/tallyfy-emulator"), ["--help"], environment: sandbox.environment)
        #expect(emulator.status == 0 && emulator.stdout.contains("USAGE"), "\(emulator.brief)")
        for unit in ["tallyfy-vault-agent.service", "tallyfy-vault-check.service", "user/tallyfy-vault-agent.service"] {
            let text = try String(contentsOf: prefix.appendingPathComponent("share/tallyfy-vault/systemd/\(unit)"), encoding: .utf8)
            #expect(text.contains("ExecStart=\(prefix.path)/bin/tallyfy-vault "), "\(unit) does not run the installed tallyfy-vault")
            #expect(!text.contains("/usr/local/bin/"), "\(unit) still names /usr/local/bin/")
        }

        let bash = try String(contentsOf: prefix.appendingPathComponent("share/bash-completion/completions/tallyfy-vault"), encoding: .utf8)
        #expect(bash.contains("--version"), "the bash completion does not offer --version")

        let removed = try runProcess(Self.install, ["--prefix", prefix.path, "--uninstall"], environment: sandbox.environment)
        #expect(removed.status == 0, "\(removed.brief)")
        for file in Self.installed {
            #expect(!FileManager.default.fileExists(atPath: prefix.appendingPathComponent(file).path), "\(file) was left behind")
        }
        for folder in ["libexec/tallyfy-vault", "share/tallyfy-vault"] {
            #expect(!FileManager.default.fileExists(atPath: prefix.appendingPathComponent(folder).path), "\(folder) was left behind")
        }
    }

    /// Each tool prints its usage and exits 0 without building anything (a
    /// build would take minutes, and this test a second).
    @Test(arguments: ["install", "bench", "fuzz", "etcd-cluster"])
    func toolsPrintTheirUsageWithoutBuilding(tool: String) throws {
        let sandbox = try Sandbox()
        let started = Date()
        let result = try runProcess(Self.packageRoot.appendingPathComponent("tools/\(tool)"), ["--help"], environment: sandbox.environment)
        #expect(result.status == 0, "\(result.brief)")
        #expect(result.stdout.contains("Usage") || result.stdout.contains("tools/\(tool)"), "\(result.stdout)")
        #expect(Date().timeIntervalSince(started) < 20, "tools/\(tool) --help took \(Date().timeIntervalSince(started)) s")
    }
}

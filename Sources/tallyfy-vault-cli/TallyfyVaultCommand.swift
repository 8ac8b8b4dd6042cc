import ArgumentParser
import Foundation
import TallyfyVault

/// The `tallyfy-vault` command: parses, hands off to the library, prints.
@main
struct TallyfyVaultCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tallyfy-vault",
        abstract: "Keep Tallyfy client credentials and tokens sealed; hand valid tokens to the programs that need them.",
        discussion: """
            Unlock order: --key-file, --passphrase-file, TALLYFY_VAULT_PASSPHRASE, \
            $CREDENTIALS_DIRECTORY/tallyfy-vault.key, then a prompt on the terminal.
            """,
        // Declared so that help and the completion scripts offer --version;
        // `main` answers a plain `--version` itself, naming both binaries.
        version: TallyfyVaultVersion.current,
        subcommands: [
            Init.self, Keygen.self, Keys.self, Rekey.self, Credentials.self, Login.self, TokenCommand.self,
            Users.self, Exec.self, Export.self, RotateSecret.self, Check.self, Status.self, DoctorCommand.self, Agent.self, ProxyCommand.self, Migrate.self, Audit.self,
            Version.self,
        ]
    )

    /// Declared here too so the global options may come before the
    /// subcommand (`tallyfy-vault --profile x token`) as well as after it.
    @OptionGroup var global: GlobalOptions

    /// ArgumentParser's own `main`, with the library's errors printed the
    /// README.md way: `tallyfy-vault: ` on standard error, a hint line, and
    /// the matching exit status.
    static func main() async {
        do {
            try TallyfyVaultVersion.requireMatchingLauncher(environment: ProcessInfo.processInfo.environment)
            // ArgumentParser's `version:` is a fixed string; ours names both binaries.
            if CommandLine.arguments.dropFirst().elementsEqual(["--version"]) {
                print(Version.text)
                return
            }
            var command = try parseAsRoot()
            AuditTrail.operation = commandPath(of: type(of: command))
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            await shutDownHTTP()
        } catch let error as VaultError {
            await shutDownHTTP()
            AuditTrail.recordFailure(error, environment: ProcessInfo.processInfo.environment)
            Output.fail(error.message, hint: error.hint, status: error.exitStatus)
        } catch let error as LaunchError {
            await shutDownHTTP()
            Output.fail(error.message, hint: error.hint, status: error.status)
        } catch let status as ExitCode {
            await shutDownHTTP()
            Glibc.exit(status.rawValue)  // `check` ends with its Nagios status
        } catch {
            // --help and --version print to standard output and succeed; every
            // parsing error gets the contract's prefix and status 64.
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }
            let message = message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
            if let advice = CommandSuggestion.advice(for: Array(CommandLine.arguments.dropFirst()), parserMessage: message) {
                Output.fail(advice.message, hint: advice.hint, status: code.rawValue)
            }
            Output.fail(message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message,
                hint: "see `tallyfy-vault help` for the commands and their options", status: code.rawValue)
        }
    }

    /// The command as typed, for audit records: `credentials set`, `users
    /// token`, and `agent` for the agent (its default subcommand not typed).
    static func commandPath(of type: ParsableCommand.Type) -> String {
        let typed = Set(CommandLine.arguments.dropFirst())
        func search(_ node: ParsableCommand.Type, _ path: [String]) -> [String]? {
            if node == type { return path }
            for child in node.configuration.subcommands {
                let isUntypedDefault = node.configuration.defaultSubcommand == child && !typed.contains(child._commandName)
                if let found = search(child, isUntypedDefault ? path : path + [child._commandName]) { return found }
            }
            return nil
        }
        return search(TallyfyVaultCommand.self, [])?.joined(separator: " ") ?? type._commandName
    }

    /// The process's one HTTP client, if a command used it, is shut down
    /// before the process ends, as AsyncHTTPClient asks.
    private static func shutDownHTTP() async {
        await EtcdClient.shutDown()
        guard TallyfyClient.hasShared else { return }
        await TallyfyClient.shutdownShared()
    }
}

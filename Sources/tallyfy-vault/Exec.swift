import ArgumentParser
import Foundation
import TallyfyVault

/// `exec -- COMMAND`: replace this process with COMMAND, a valid token in its environment.
struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command with a valid token in its environment.",
        discussion: """
            The process is replaced (execve): the command keeps the pid, terminal and signals, and its \
            exit status is the status. Sets TALLYFY_TOKEN, TALLYFY_API_TOKEN, TALLYFY_ORG_ID, \
            TALLYFY_API_URL, TALLYFY_TOKEN_EXPIRES_AT and TALLYFY_VAULT_EXEC; removes TALLYFY_VAULT_PASSPHRASE. \
            127: command not found; 126: not executable.
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var options: TokenOptions

    // Everything after `--` is the command, exactly; options before it are
    // ours (including the global ones, which `.captureForPassthrough` would
    // swallow).
    @Argument(parsing: .postTerminator, help: ArgumentHelp("The command and its arguments, after --.", valueName: "COMMAND"))
    var command: [String] = []

    func run() throws {
        let arguments = command.first == "--" ? Array(command.dropFirst()) : command
        guard !arguments.isEmpty else {
            throw ValidationError("no command to run: write it after --, as in `tallyfy-vault exec -- ./sync`")
        }
        try ChildEnvironment.refuseNesting(global.environment)
        let grant = try options.grant(global)
        try ProcessReplacement.execute(arguments, environment: ChildEnvironment.build(parent: global.environment, grant: grant))
    }
}

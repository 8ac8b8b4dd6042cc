import ArgumentParser
import Foundation
import TallyfyVault

/// `exec -- COMMAND`: replace this process with COMMAND, a valid token in its environment.
struct Exec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command with a valid token in its environment.",
        discussion: """
            Options go before `--`; everything after it is the command, passed exactly, with no shell. \
            The process is replaced (execve): the command keeps the pid, terminal and signals, and its \
            exit status is the status. Sets TALLYFY_TOKEN, TALLYFY_API_TOKEN, TALLYFY_ORG_ID, \
            TALLYFY_API_URL, TALLYFY_BASE_URL, TALLYFY_API_BASE_URL, TALLYFY_TOKEN_EXPIRES_AT and \
            TALLYFY_VAULT_EXEC; removes TALLYFY_VAULT_PASSPHRASE. 127: command not found; 126: not executable.

            Without --user the command gets the application token, which can provision users and issue \
            their tokens but acts as no user: most Tallyfy API calls, and most commands of Tallyfy's own \
            CLI (`tallyfy` reads TALLYFY_API_TOKEN and TALLYFY_BASE_URL), need a user token. Use \
            `--user EMAIL` after `tallyfy-vault users create` and `users token`.

            With --keep-fresh the command runs as a child instead, for programs that outlive a token: \
            tallyfy-vault stays as a small supervisor, keeps the token in the file named by \
            TALLYFY_TOKEN_FILE (private, replaced atomically) and renews it before it gets close to \
            expiry; --on-renew says how the command hears of it. It forwards INT, TERM, HUP, QUIT, USR1, \
            USR2 and WINCH, exits with the command's status (128+N for signal N) and removes the file. \
            It unlocks the vault again at each renewal, so it needs a key file, passphrase file, \
            TALLYFY_VAULT_PASSPHRASE or systemd credential, not a prompt. 69: the token expired, could \
            not be renewed and --on-expiry stop stopped the command.

            With --mask (or TALLYFY_VAULT_MASK=1; --no-mask turns it off) the command also runs as a \
            child, and its standard output and error reach ours with every token it was given (each \
            renewed one too, with --keep-fresh) replaced by <redacted>: raw, base64 and base64url (also \
            inside a longer base64 string), percent-encoded and JSON-escaped. On a terminal the command \
            gets a pseudo-terminal, so colours and prompts still work. Meant for CI logs; a command \
            that transforms the token in its own way (hashes, reverses, splits it) can still print that.

            With --proxy the command never holds the token. tallyfy-vault starts a proxy on 127.0.0.1 (a \
            free port) for as long as the command runs; TALLYFY_API_URL, TALLYFY_BASE_URL and \
            TALLYFY_API_BASE_URL point at it (same path layout as the API URL), TALLYFY_TOKEN and \
            TALLYFY_API_TOKEN hold a random capability for this run only, and the proxy replaces it with \
            the real token on each request it forwards. It forwards only paths below the API URL (never \
            the token endpoint), and only those the --allow rules name when any are given; everything \
            else, and a wrong capability, it answers itself (401/403, Tallyfy's error shape). It renews \
            the token before expiry, and once at a 401 from Tallyfy, then sends the request again. Like \
            --keep-fresh it needs an agent or an unlock source it can read again. The port is closed \
            when the command ends; the status, signals and output are the command's.
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var options: TokenOptions
    @OptionGroup var keepFresh: KeepFreshArguments
    @OptionGroup var masking: MaskArguments
    @OptionGroup var proxying: ProxyArguments

    // Everything after `--` is the command, exactly; options before it are
    // ours (including the global ones, which `.captureForPassthrough` would
    // swallow).
    @Argument(parsing: .postTerminator, help: ArgumentHelp("The command and its arguments, after --.", valueName: "COMMAND"))
    var command: [String] = []

    func run() async throws {
        guard !command.isEmpty else {
            throw ValidationError("no command to run: write it after --, as in `tallyfy-vault exec -- ./sync`")
        }
        let mask = try masking.enabled(global.context.environment)
        if let rules = try proxying.rules() {
            guard !keepFresh.keepFresh else {
                throw ValidationError("--proxy and --keep-fresh are two ways to run a long command: --keep-fresh gives it the token, --proxy never does; use one")
            }
            try await Self.runProxied(command, context: global.context, selection: options.selection, rules: rules, verbose: proxying.verbose, mask: mask)
        }
        if let supervision = try keepFresh.supervision() {
            try await Self.supervise(command, context: global.context, selection: options.selection, options: supervision, mask: mask)
        }
        if mask { try await Self.launchMasked(command, context: global.context, selection: options.selection) }
        try await Self.launch(command, context: global.context, selection: options.selection)
    }

    /// Everything `exec` does after parsing. (A plain `exec` with a fresh
    /// token never gets here: the `tallyfy-vault` launcher serves it.)
    static func launch(_ arguments: [String], context: CommandContext, selection: TokenSelection) async throws -> Never {
        try ChildEnvironment.refuseNesting(context.environment)
        let grant = try await selection.grant(context)
        try ProcessReplacement.execute(arguments, environment: ChildEnvironment.build(parent: context.environment, grant: grant))
    }
}

import ArgumentParser
import Foundation
import TallyfyVault

/// `exec --keep-fresh [--on-renew …] [--on-expiry …]`: the options that make
/// `exec` supervise its command instead of replacing itself with it.
struct KeepFreshArguments: ParsableArguments {
    @Flag(help: ArgumentHelp("""
        Run the command as a child and keep its token fresh for as long as it runs, in the file \
        named by TALLYFY_TOKEN_FILE.
        """))
    var keepFresh = false

    @Option(help: ArgumentHelp("""
        With --keep-fresh, after each renewal: none (the default: the command reads the file), \
        signal:NAME (HUP, USR1, USR2 or WINCH: a reload), or restart (SIGTERM, 10 s, SIGKILL, then start it again with \
        the new token in its environment).
        """, valueName: "none|signal:NAME|restart"))
    var onRenew: String?

    @Option(help: ArgumentHelp("""
        With --keep-fresh, when the token has expired and renewing still fails: keep (the default: \
        keep the command running and keep trying) or stop (stop the command and exit 69).
        """, valueName: "keep|stop"))
    var onExpiry: String?

    /// The supervisor's options, or `nil` for a plain `exec`.
    func supervision() throws -> KeepFreshOptions? {
        guard keepFresh else {
            if onRenew != nil || onExpiry != nil {
                throw ValidationError("--on-renew and --on-expiry apply only with --keep-fresh")
            }
            return nil
        }
        var options = KeepFreshOptions()
        if let onRenew { options.onRenew = try KeepFreshOptions.OnRenew(parsing: onRenew) }
        if let onExpiry {
            guard let value = KeepFreshOptions.OnExpiry(rawValue: onExpiry) else {
                throw ValidationError("--on-expiry \(onExpiry) is not one of keep, stop")
            }
            options.onExpiry = value
        }
        return options
    }
}

extension Exec {
    /// `exec --keep-fresh`: start the command as a child, supervise it, and
    /// exit with its status.
    static func supervise(
        _ arguments: [String], context: CommandContext, selection: TokenSelection, options: KeepFreshOptions, mask: Bool = false
    ) async throws -> Never {
        var options = options
        #if TALLYFY_TEST_HOOKS
            // Debug builds only: a short SIGTERM-to-SIGKILL grace, so a test
            // of a child that ignores SIGTERM need not wait 10 s.
            if let grace = context.environment["TALLYFY_VAULT_TEST_STOP_GRACE"].flatMap(TimeInterval.init) { options.stopGrace = grace }
        #endif
        try ChildEnvironment.refuseNesting(context.environment)
        ProcessHardening.protect()  // for the supervisor's whole life: it never execs
        let (request, source) = try await selection.renewingSource(context, what: "exec --keep-fresh")
        let first = try await selection.firstGrant(request, from: source)
        let status = try Supervisor.run(
            arguments, parentEnvironment: context.environment, request: request, first: first, source: source, options: options,
            mask: mask, note: { Output.note($0) })
        fflush(nil)
        Glibc.exit(status)
    }
}

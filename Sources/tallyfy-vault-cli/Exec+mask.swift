import ArgumentParser
import Foundation
import TallyfyVault

/// `exec --mask` / `--no-mask`: whether the command's output is copied
/// through the masker (docs/exec.md, "Masking a command's output").
struct MaskArguments: ParsableArguments {
    @Flag(inversion: .prefixedNo, help: ArgumentHelp("""
        Run the command as a child and replace every form of the token (raw, base64, percent- and \
        JSON-encoded) in its output with <redacted> (default: TALLYFY_VAULT_MASK=1 turns it on).
        """))
    var mask: Bool?

    func enabled(_ environment: [String: String]) throws -> Bool {
        try OutputMasking.requested(flag: mask, environment: environment)
    }
}

extension Exec {
    /// `exec --mask` without `--keep-fresh`: the command as a child, its
    /// output masked; exits with its status.
    static func launchMasked(_ arguments: [String], context: CommandContext, selection: TokenSelection) async throws -> Never {
        try ChildEnvironment.refuseNesting(context.environment)
        let grant = try await selection.grant(context)
        ProcessHardening.protect()  // the supervisor holds the token while the child runs
        let status = try Supervisor.runMasked(arguments, parentEnvironment: context.environment, grant: grant)
        fflush(nil)
        Glibc.exit(status)
    }
}

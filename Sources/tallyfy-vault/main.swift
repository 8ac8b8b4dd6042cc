// The `tallyfy-vault` command.
//
// This small launcher serves the hot path alone: a plain `exec` whose sealed
// token is fresh enough — read, unlock, decide, execve (or, with `--mask`,
// run the command as its child through the masker) — linking only the
// core library (no HTTP stack, no argument parser), because in a binary that
// carries them, just starting costs several times more than `exec` itself.
// Every other command line, and every `exec` that needs a refresh or fails,
// is handed unchanged to the full CLI, `tallyfy-vault-cli` (same pid, same
// argv), which does the work and reports any error. docs/speed.md has
// the numbers; "Install" the layout that `CLILocation` relies on.
#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
import TallyfyVaultCore

#if canImport(Glibc)
    import Glibc
#endif

func fail(_ message: String, hint: String) -> Never {
    let text = "tallyfy-vault: \(message)\ntallyfy-vault: hint: \(hint)\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
    exit(78)
}

// With /proc unmounted or a strange parent, argv can be empty: nothing here
// may trap on it, and nothing may be looked up relative to it.
let launchedAt = Handover.monotonicNow()
let arguments = Array(CommandLine.arguments.dropFirst())
if let invocation = ExecFastPath.parse(arguments) {
    switch invocation.decide() {
    case .run(let environment):
        // Returns only if the command can't be run; the CLI then reports 126/127.
        _ = try? ProcessReplacement.execute(invocation.command, environment: environment)
    case .runMasked(let grant):
        // The command's status; a command that can't be started goes to
        // the CLI, which reports 126/127.
        if let status = try? Supervision.run(invocation.command, parentEnvironment: invocation.context.environment, first: grant, mask: true) {
            exit(status)
        }
    case .handOver(let note?):
        setenv(Handover.seenVariable, note, 1)
    case .handOver(nil):
        break
    }
}

if let line = HelperFastPath.answer(arguments) {
    print(line)
    exit(0)
}

let cli: String
switch CLILocation.find() {
case .found(let path):
    cli = path
case .notFound(let expected):
    fail("the full command-line tool is not installed: looked for \(expected.joined(separator: " and "))",
        hint: "install tallyfy-vault with `tools/install`, which puts tallyfy-vault-cli in PREFIX/libexec/tallyfy-vault/")
case .unsafe(let path, let reason):
    fail("refusing to run \(path): \(reason)", hint: "reinstall with `tools/install`, or fix its owner and mode")
case .unknownLocation:
    fail("cannot tell where this tallyfy-vault is installed (/proc/self/exe is unreadable), so the full command-line tool can't be found safely",
        hint: "run it with /proc mounted, or run PREFIX/libexec/tallyfy-vault/tallyfy-vault-cli directly")
}

ProcessHardening.restoreForChild()
setenv(TallyfyVaultVersion.launcherVariable, TallyfyVaultVersion.current, 1)
setenv(Handover.launchedAtVariable, String(launchedAt), 1)
let programName = CommandLine.arguments.first ?? "tallyfy-vault"
let argv = [strdup(programName)] + arguments.map { strdup($0) } + [nil]
execv(cli, argv)
fail("could not start \(cli): \(String(cString: strerror(errno)))",
    hint: "reinstall with `tools/install`")

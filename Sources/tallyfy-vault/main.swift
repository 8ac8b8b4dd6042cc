// The `tallyfy-vault` command.
//
// This small launcher serves the hot path alone: a plain `exec` whose sealed
// token is fresh enough — read, unlock, decide, execve — linking only the
// core library (no HTTP stack, no argument parser), because in a binary that
// carries them, just starting costs several times more than `exec` itself.
// Every other command line, and every `exec` that needs a refresh or fails,
// is handed unchanged to `tallyfy-vault-cli` beside it (same pid, same argv),
// which does the work and reports any error. README.md, "Speed", has the numbers.
#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
import TallyfyVaultCore

#if canImport(Glibc)
    import Glibc
#endif

let arguments = Array(CommandLine.arguments.dropFirst())
if let invocation = ExecFastPath.parse(arguments), let environment = invocation.childEnvironment() {
    // Returns only if the command can't be run; the CLI then reports 126/127.
    _ = try? ProcessReplacement.execute(invocation.command, environment: environment)
}

/// The full CLI, installed beside this launcher.
func fullCLIPath() -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let me = length > 0 ? String(cString: buffer) : CommandLine.arguments[0]
    return URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("tallyfy-vault-cli").path
}

let cli = fullCLIPath()
ProcessHardening.restoreForChild()
let argv = [strdup(CommandLine.arguments[0])] + arguments.map { strdup($0) } + [nil]
execv(cli, argv)
let message = """
    tallyfy-vault: could not start \(cli): \(String(cString: strerror(errno)))
    tallyfy-vault: hint: install tallyfy-vault-cli in the same folder as tallyfy-vault

    """
_ = message.withCString { write(2, $0, strlen($0)) }
exit(78)

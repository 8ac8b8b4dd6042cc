#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#endif

/// Replaces the current process with a command, as `exec` in a shell does.
///
/// The child keeps our pid, standard streams, terminal and signals; its exit
/// status is the status. No shell is involved: the arguments pass through
/// exactly as given.
package enum ProcessReplacement {
    /// Looks `command` up on `PATH` (unless it contains a slash) and calls
    /// `execve`. Returns only by throwing: 127 when the command is not found,
    /// 126 when it is found but cannot be executed.
    package static func execute(_ arguments: [String], environment: [String: String]) throws -> Never {
        guard let command = arguments.first, !command.isEmpty else {
            throw LaunchError(status: 64, message: "no command to run", hint: "write it after --: tallyfy-vault exec -- COMMAND")
        }
        let path = try resolve(command, searchPath: environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")
        fflush(nil)
        ProcessHardening.restoreForChild()
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        execve(path, argv, envp)
        let code = errno
        throw LaunchError(
            status: code == ENOENT ? 127 : 126,
            message: "could not run \(command): \(String(cString: strerror(code)))",
            hint: code == ENOEXEC ? "is it a script without a #! line?" : nil)
    }

    /// The file `execve` should run, or a 127 / 126 error.
    package static func resolve(_ command: String, searchPath: String) throws -> String {
        if command.contains("/") {
            guard access(command, F_OK) == 0 else {
                throw LaunchError(status: 127, message: "\(command): no such file")
            }
            guard access(command, X_OK) == 0, !isDirectory(command) else {
                throw LaunchError(status: 126, message: "\(command) is not executable", hint: "chmod +x \(command)?")
            }
            return command
        }
        var foundButNotExecutable: String? = nil
        for directory in searchPath.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = (directory.isEmpty ? "." : String(directory)) + "/" + command
            guard access(candidate, F_OK) == 0, !isDirectory(candidate) else { continue }
            if access(candidate, X_OK) == 0 { return candidate }
            foundButNotExecutable = foundButNotExecutable ?? candidate
        }
        if let path = foundButNotExecutable {
            throw LaunchError(status: 126, message: "\(path) is not executable", hint: "chmod +x \(path)?")
        }
        throw LaunchError(status: 127, message: "\(command): command not found", hint: "check the name and PATH")
    }

    private static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }
}

/// A failure to start the child, with the shell's statuses (126, 127).
package struct LaunchError: Error, Sendable {
    package let status: Int32
    package let message: String
    package let hint: String?

    package init(status: Int32, message: String, hint: String? = nil) {
        self.status = status
        self.message = message
        self.hint = hint
    }
}

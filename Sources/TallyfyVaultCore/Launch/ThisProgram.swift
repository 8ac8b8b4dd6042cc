#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// This running program, as the kernel names it: the one place that reads
/// `/proc/self/exe` (never `argv[0]` or the current folder, which a caller
/// chooses). The launcher finds its CLI from it, `doctor` and `version` show
/// it, and the agent and the proxy start copies of it.
package enum ThisProgram {
    /// The real path of this executable, symbolic links resolved; `nil` when
    /// /proc can't say (not mounted, or the file was deleted and replaced).
    package static var path: String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0, buffer[0] == CChar(UInt8(ascii: "/")) else { return nil }
        return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Starts a copy of this program in the background, detached: in a
    /// session of its own (away from our terminal), standard input and output
    /// on /dev/null, standard error appended to `logPath` (never through a
    /// symbolic link), and `descriptor3` as its descriptor 3 (a pipe end
    /// that hands it a key, or hands back its variables). `what` names it in
    /// errors ("agent", "proxy").
    package static func startDetached(
        _ what: String, arguments: [String], environment: [String: String], logPath: String, descriptor3: Int32
    ) throws -> pid_t {
        guard let executable = path else {
            throw VaultError(.configuration, "cannot tell where this program is (/proc/self/exe), so it cannot start a detached \(what)",
                hint: "run `tallyfy-vault \(what)` in the foreground (e.g. under systemd)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, descriptor3, 3)  // dup2 clears close-on-exec
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, logPath, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, 0o600)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(spawnSetSession))
        let argv = (["tallyfy-vault"] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard spawned == 0 else { throw VaultError(.io, "could not start the \(what): \(String(cString: strerror(spawned)))") }
        return pid
    }

    /// glibc's `POSIX_SPAWN_SETSID` (a GNU extension Swift does not import):
    /// the child starts a new session, away from our terminal.
    private static let spawnSetSession: Int32 = 0x80
}

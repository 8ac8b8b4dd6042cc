import CSodium
#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// A command started as a child of a supervisor (`exec --keep-fresh`),
/// rather than replacing it as a plain `exec` does.
///
/// The child gets `PR_SET_PDEATHSIG(SIGTERM)`, so a supervisor killed with
/// `kill -9` does not leave it running with a token file nobody renews; its
/// signal dispositions and core limit are what they would be without us.
/// Start it from the thread that will outlive it (the main thread): the
/// kernel sends the death signal when the *thread* that forked exits.
package struct SupervisedChild: Sendable {
    package let pid: pid_t

    /// Descriptors a child gets instead of ours (`exec --mask`'s pipes or
    /// pseudo-terminal); -1 keeps ours.
    package struct Stdio: Sendable {
        package var input: Int32 = -1
        package var output: Int32 = -1
        package var error: Int32 = -1
        /// A session of its own, with `input` (a pty) as its terminal.
        package var controllingTerminal = false

        package init(input: Int32 = -1, output: Int32 = -1, error: Int32 = -1, controllingTerminal: Bool = false) {
            self.input = input
            self.output = output
            self.error = error
            self.controllingTerminal = controllingTerminal
        }
    }

    /// Looks the command up as `exec` does and starts it; 127 / 126 as a
    /// `LaunchError` when it cannot be run. `stdio`: descriptors the child
    /// gets instead of ours.
    package static func start(_ arguments: [String], environment: [String: String], stdio: Stdio? = nil) throws -> SupervisedChild {
        guard let command = arguments.first, !command.isEmpty else {
            throw LaunchError(status: 64, message: "no command to run", hint: "write it after --: tallyfy-vault exec --keep-fresh -- COMMAND")
        }
        let path = try ProcessReplacement.resolve(command, searchPath: environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")
        var errorPipe: [Int32] = [-1, -1]
        guard makePipe(&errorPipe, nonBlocking: false) else {
            throw LaunchError(status: 71, message: "could not start \(command): \(String(cString: strerror(errno)))")
        }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp {
                // The token is in here: wipe it before the memory goes back.
                if let pointer { memset(pointer, 0, strlen(pointer)) }
                free(pointer)
            }
        }
        fflush(nil)
        let saved = ProcessHardening.coreLimitForChild
        var core = saved ?? rlimit()
        // No signal blocked, as a shell starts a command: the thread that
        // starts it is the runtime's, which blocks most signals (SIGTERM,
        // SIGALRM, SIGTSTP, …), and a child inherits that thread's mask.
        var childMask = sigset_t()
        sigemptyset(&childMask)
        let descriptors: [Int32] = [
            stdio?.input ?? -1, stdio?.output ?? -1, stdio?.error ?? -1, stdio?.controllingTerminal == true ? 1 : 0,
        ]
        let pid = argv.withUnsafeBufferPointer { argvBuffer in
            envp.withUnsafeBufferPointer { envpBuffer in
                withUnsafePointer(to: &core) { limit in
                    descriptors.withUnsafeBufferPointer { stdioBuffer in
                        tallyfy_spawn_supervised(
                            path, argvBuffer.baseAddress, envpBuffer.baseAddress, saved == nil ? nil : limit, &childMask,
                            stdio == nil ? nil : stdioBuffer.baseAddress, errorPipe[1])
                    }
                }
            }
        }
        let forkError = errno
        close(errorPipe[1])
        defer { close(errorPipe[0]) }
        guard pid > 0 else {
            throw LaunchError(status: 71, message: "could not start \(command): \(String(cString: strerror(forkError)))")
        }
        // execve closes the pipe (close-on-exec) with nothing written; a
        // failure writes its errno.
        var code: Int32 = 0
        var got = 0
        repeat { got = read(errorPipe[0], &code, MemoryLayout<Int32>.size) } while got < 0 && errno == EINTR
        guard got == MemoryLayout<Int32>.size else { return SupervisedChild(pid: pid) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        throw LaunchError(
            status: code == ENOENT ? 127 : 126,
            message: "could not run \(command): \(String(cString: strerror(code)))",
            hint: code == ENOEXEC ? "is it a script without a #! line?" : nil)
    }

    /// Sends `signal`; a child already gone is not an error.
    package func send(_ signal: Int32) {
        kill(pid, signal)
    }

    /// What became of the child since it was last asked.
    package enum Change: Equatable, Sendable {
        /// Its status as a shell reports it: its exit code, or 128 + the
        /// signal that killed it.
        case ended(Int32)
        /// Stopped by a signal (job control: ^Z on its own terminal).
        case stopped
    }

    /// `nil` while it runs (and, unless `reportingStops`, while it is stopped).
    package func change(reportingStops: Bool = false) -> Change? {
        var status: Int32 = 0
        var result: pid_t
        repeat { result = waitpid(pid, &status, WNOHANG | (reportingStops ? WUNTRACED : 0)) } while result < 0 && errno == EINTR
        guard result == pid else { return result < 0 ? .ended(127) : nil }  // < 0: not ours any more (ECHILD)
        // WIFSTOPPED, which Swift cannot import as a macro.
        if status & 0xff == 0x7f { return .stopped }
        return .ended(Self.shellStatus(status))
    }

    /// `WIFEXITED ? WEXITSTATUS : 128 + WTERMSIG`, which Swift cannot import as macros.
    static func shellStatus(_ status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }
}

/// Where a supervisor waits: signals (written by a C handler, one byte each)
/// and events from its other threads arrive on one non-blocking pipe, which
/// the supervisor's thread polls.
package final class WakePipe: Sendable {
    let readEnd: Int32
    let writeEnd: Int32

    /// Bytes with this bit set are signals the kernel sent to the whole
    /// process group (a terminal's ^C): the child has them already.
    package static let fromKernel: UInt8 = 0x80

    package init() throws {
        var ends: [Int32] = [-1, -1]
        guard makePipe(&ends, nonBlocking: true) else {
            throw VaultError(.io, "could not create a pipe: \(String(cString: strerror(errno)))")
        }
        readEnd = ends[0]
        writeEnd = ends[1]
    }

    deinit {
        close(readEnd)
        close(writeEnd)
    }

    /// Catches each of `signals` into this pipe. Returns those left alone
    /// because they were ignored when we started (`nohup`).
    package func catchSignals(_ signals: [Int32]) -> Set<Int32> {
        var ignored: Set<Int32> = []
        for signal in signals where tallyfy_catch_signal(signal, writeEnd) == 1 {
            ignored.insert(signal)
        }
        return ignored
    }

    /// Wakes the waiting thread with `byte` (from any thread).
    package func post(_ byte: UInt8) {
        var value = byte
        _ = Glibc.write(writeEnd, &value, 1)
    }

    /// Waits up to `timeout` seconds (`nil`: for ever) and returns every
    /// byte that arrived.
    package func wait(timeout: TimeInterval?) -> [UInt8] {
        var descriptor = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
        let milliseconds = timeout.map { Int32(max(0, min($0 * 1000, 3_600_000)).rounded(.up)) } ?? -1
        _ = poll(&descriptor, 1, milliseconds)
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64)
        while true {
            let got = read(readEnd, &buffer, buffer.count)
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { break }
            bytes += buffer[0..<got]
        }
        return bytes
    }
}

/// Signal names as `--on-renew signal:NAME` takes them.
package enum SignalName {
    /// The signals a supervisor forwards to its child.
    package static let forwarded: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH]

    /// The signals `--on-renew signal:NAME` sends: those programs
    /// conventionally catch to reload, reopen or redraw. INT, TERM and QUIT
    /// ask a program to end (`--on-renew restart` does that properly), and
    /// KILL, STOP, PIPE, SEGV and the like end or freeze it: none is a reload.
    static let table: [String: Int32] = ["HUP": SIGHUP, "USR1": SIGUSR1, "USR2": SIGUSR2, "WINCH": SIGWINCH]

    /// Their names, for hints.
    package static let reloads = ["HUP", "USR1", "USR2", "WINCH"]

    /// Signals a user may name that are refused as a reload.
    static let others: Set<String> = [
        "INT", "TERM", "QUIT", "KILL", "STOP", "TSTP", "TTIN", "TTOU", "CONT", "PIPE", "ALRM", "VTALRM", "PROF", "CHLD",
        "SEGV", "BUS", "ILL", "FPE", "ABRT", "IOT", "TRAP", "SYS", "XCPU", "XFSZ", "URG", "IO", "POLL", "PWR", "STKFLT",
    ]

    static func bare(_ name: String) -> String {
        var upper = name.uppercased()
        if upper.hasPrefix("SIG") { upper.removeFirst(3) }
        return upper
    }

    /// `HUP`, `SIGHUP` or `hup` (a reload signal); `nil` for anything else.
    package static func number(_ name: String) -> Int32? {
        table[bare(name)]
    }

    /// Whether `name` is a signal at all (reload or not), so a refusal can say why.
    package static func isSignal(_ name: String) -> Bool {
        table[bare(name)] != nil || others.contains(bare(name))
    }

    /// `HUP` for SIGHUP; the number for one not in the table.
    package static func name(_ number: Int32) -> String {
        table.first { $0.value == number }?.key ?? String(number)
    }
}

/// `pipe2(O_CLOEXEC [| O_NONBLOCK])`, which Glibc's module does not export
/// without _GNU_SOURCE. Only the supervising thread forks, so nothing can
/// start a program between `pipe` and `fcntl`.
package func makePipe(_ ends: inout [Int32], nonBlocking: Bool) -> Bool {
    guard pipe(&ends) == 0 else { return false }
    for end in ends {
        _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        if nonBlocking { _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK) }
    }
    return true
}

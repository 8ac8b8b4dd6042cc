#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif
import Dispatch
import Synchronization

/// `exec --mask`: the pipes a supervised child writes its standard output and
/// error to, and the thread that copies each through its own `OutputMasker`
/// to ours (descriptors 1 and 2), so no form of a token the run handed out
/// reaches them.
///
/// Bytes go out as soon as the masker has decided them; there is no timer.
/// The supervisor keeps the child's ends open (a restarted child gets the
/// same ones), so when the child has ended, what it wrote is all in the
/// pipes: `finish` copies it, releases what the maskers held, and returns.
/// A descendant that writes after that gets EPIPE. When our side of a stream
/// is closed (`| head`), its pipe is closed too, so the child gets EPIPE or
/// SIGPIPE as it would have without us.
///
/// When our standard input and output are both a terminal, the child gets a
/// pseudo-terminal instead (its `isatty` is true, colours and prompts work):
/// with our terminal's settings and window size (kept in step by
/// `windowChanged`), as its standard input and output, and as its standard
/// error too unless ours is not a terminal, which then stays a pipe of its
/// own. Our terminal is in raw mode meanwhile, its keys relayed as typed
/// (so ^C reaches the child through its own terminal), and restored by
/// `finish`.
package final class MaskedOutput: Sendable {
    /// The descriptors the child gets instead of ours.
    package let childStdio: SupervisedChild.Stdio
    /// The ends the child writes to, kept open for a restarted child.
    private let childEnds: [Int32]
    /// Where the relay reads each stream (the pty's master for a terminal);
    /// -1: not relayed (the child's standard error is the pty too).
    private let readEnds: [Int32]
    /// The pty's master, or -1.
    private let master: Int32
    /// Our terminal's settings before raw mode, to restore.
    private let savedTerminal: Mutex<termios?>
    private let wake: (read: Int32, write: Int32)
    private let targets: [Int32] = [STDOUT_FILENO, STDERR_FILENO]
    /// Secrets added since the relay last looked; it looks before every read.
    private let added = Mutex<[[UInt8]]>([])
    private let done = DispatchSemaphore(value: 0)
    private let finished = Mutex(false)

    /// Most a stream is read for once the child has ended: the pipe's
    /// content then (a pipe holds at most 1 MiB unless raised), not the
    /// output of a descendant that goes on writing.
    static let drainLimit = 1 << 20
    static let endByte: UInt8 = 1

    /// Makes the pipes (or pty) and starts the relay, knowing `secrets` already.
    package init(secrets: [String]) throws {
        let terminal = isatty(STDIN_FILENO) == 1 && isatty(STDOUT_FILENO) == 1
        var out: [Int32] = [-1, -1]
        var err: [Int32] = [-1, -1]
        var wakeEnds: [Int32] = [-1, -1]
        let none: (master: Int32, slave: Int32) = (-1, -1)
        let pty = terminal ? PseudoTerminal.open(like: STDIN_FILENO) ?? none : none
        let stderrApart = !terminal || isatty(STDERR_FILENO) != 1
        guard terminal ? pty.master >= 0 : makePipe(&out, nonBlocking: false),
            !stderrApart || makePipe(&err, nonBlocking: false), makePipe(&wakeEnds, nonBlocking: true)
        else {
            let reason = String(cString: strerror(errno))
            for end in out + err + wakeEnds + [pty.master, pty.slave] where end >= 0 { close(end) }
            throw VaultError(.io, "could not create a \(terminal ? "pseudo-terminal" : "pipe") for --mask: \(reason)")
        }
        for end in [out[0], err[0]] where end >= 0 {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            // F_SETPIPE_SZ (Linux): fewer, larger reads for a chatty child.
            // Refused beyond /proc/sys/fs/pipe-max-size, which is harmless.
            _ = fcntl(end, 1031, Int32(1 << 20))
        }
        master = pty.master
        if terminal {
            childStdio = SupervisedChild.Stdio(input: pty.slave, output: pty.slave, error: stderrApart ? err[1] : pty.slave, controllingTerminal: true)
            childEnds = [pty.slave, err[1]]
            readEnds = [pty.master, err[0]]
        } else {
            childStdio = SupervisedChild.Stdio(output: out[1], error: err[1])
            childEnds = [out[1], err[1]]
            readEnds = [out[0], err[0]]
        }
        wake = (wakeEnds[0], wakeEnds[1])
        savedTerminal = Mutex(terminal ? PseudoTerminal.makeRaw(STDIN_FILENO) : nil)
        let initial = secrets.map { Array($0.utf8) }
        DetachedThread.start { [self] in
            relay(initial)
            done.signal()
        }
        if terminal {
            // Keys as typed, to the child's terminal. Blocked in read(0) when
            // the supervisor exits, which ends it.
            let master = pty.master
            DetachedThread.start {
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let got = buffer.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
                    if got < 0 && errno == EINTR { continue }
                    guard got > 0 else { return }
                    var keys = buffer[0..<got]
                    while let key = Self.suspendKey(master), let index = keys.firstIndex(of: key) {
                        guard Self.writeAll(master, Array(keys[..<index])) else { return }
                        Self.stopForeground(master)
                        keys = keys[(index + 1)...]
                    }
                    guard Self.writeAll(master, Array(keys)) else { return }
                }
            }
        }
    }

    deinit {
        finish()
        for end in childEnds + [wake.read, wake.write] where end >= 0 { close(end) }
    }

    /// Our window changed size (SIGWINCH): the child's terminal takes it
    /// (and signals the child). False without a pty: pass the signal on.
    package func windowChanged() -> Bool {
        master >= 0 && PseudoTerminal.copyWindowSize(from: STDOUT_FILENO, to: master)
    }

    /// Whether the child has a pseudo-terminal of ours to relay (then ^Z
    /// stops it alone, and the supervisor must stop too: see
    /// `suspendTerminal`).
    package var relaysTerminal: Bool { master >= 0 }

    /// The child's suspend key (^Z) when it should stop the child: its
    /// terminal makes signals of keys, and the process group in front is
    /// the child's own. The kernel never stops that group for a key (its
    /// parent, the supervisor, is in another session, so the group is
    /// orphaned), so the relay stops it. A job of a shell running inside
    /// is not orphaned: its ^Z goes to its terminal, and its shell handles it.
    static func suspendKey(_ master: Int32) -> UInt8? {
        var settings = termios()
        guard tcgetattr(master, &settings) == 0, settings.c_lflag & tcflag_t(ISIG) != 0 else { return nil }
        let key = withUnsafeBytes(of: settings.c_cc) { $0[Int(VSUSP)] }
        let foreground = tcgetpgrp(master)
        guard key != 0, foreground > 0, foreground == tcgetsid(master) else { return nil }
        return key
    }

    /// Stops the process group in front on the child's terminal; the
    /// supervisor sees its child stop and stops too.
    static func stopForeground(_ master: Int32) {
        let foreground = tcgetpgrp(master)
        if foreground > 0 { kill(-foreground, SIGSTOP) }
    }

    /// Continues the process group in front on the child's terminal (after
    /// `fg`), besides the child itself.
    package func continueForeground() {
        let foreground = master >= 0 ? tcgetpgrp(master) : -1
        if foreground > 0 { kill(-foreground, SIGCONT) }
    }

    /// The child stopped (^Z on its terminal): our terminal goes back to
    /// the settings it had, for the shell that takes it over while we stop.
    package func suspendTerminal() {
        if let saved = savedTerminal.withLock({ $0 }) { PseudoTerminal.restore(STDIN_FILENO, saved) }
    }

    /// We were continued (`fg`): raw mode again, over the settings the
    /// terminal has now, and the child's terminal takes our window's size.
    package func resumeTerminal() {
        guard relaysTerminal else { return }
        savedTerminal.withLock { saved in
            if saved != nil, let now = PseudoTerminal.makeRaw(STDIN_FILENO) { saved = now }
        }
        _ = PseudoTerminal.copyWindowSize(from: STDOUT_FILENO, to: master)
    }

    /// Adds a secret (a renewed token) before anything can print it: call
    /// this before the child can see the token.
    package func add(_ secret: String) {
        added.withLock { $0.append(Array(secret.utf8)) }
    }

    /// The child has ended for good: copies what it wrote and what the
    /// maskers held, and returns once the relay has stopped.
    package func finish() {
        guard finished.withLock({ (value: inout Bool) -> Bool in
            defer { value = true }
            return !value
        }) else { return }
        var byte = Self.endByte
        _ = write(wake.write, &byte, 1)
        done.wait()
        if let saved = savedTerminal.withLock({ $0 }) { PseudoTerminal.restore(STDIN_FILENO, saved) }
    }

    private func relay(_ initial: [[UInt8]]) {
        var maskers = [OutputMasker(secrets: initial), OutputMasker(secrets: initial)]
        var reading = readEnds.map { $0 >= 0 }
        // As large as the pipe (F_SETPIPE_SZ above): a chatty child is read
        // in a few large pieces, each fed to the masker in one call.
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        defer { for index in 0..<2 where reading[index] { close(readEnds[index]) } }

        /// Writes `bytes` to our side of stream `index`; when that is gone,
        /// stops reading the stream (closing it tells the child).
        func put(_ index: Int, _ bytes: [UInt8]) {
            guard !bytes.isEmpty, reading[index] else { return }
            if !Self.writeAll(targets[index], bytes) {
                close(readEnds[index])
                reading[index] = false
            }
        }
        func takeAdded() {
            let secrets = added.withLock { (list: inout [[UInt8]]) -> [[UInt8]] in
                defer { list = [] }
                return list
            }
            if !secrets.isEmpty { for index in 0..<2 { put(index, maskers[index].add(secrets)) } }
        }
        /// One read of stream `index`: false at the end of it or when empty.
        func readOnce(_ index: Int) -> Bool {
            takeAdded()  // a token handed out before these bytes were written
            let got = buffer.withUnsafeMutableBytes { read(readEnds[index], $0.baseAddress, $0.count) }
            if got < 0 && errno == EINTR { return true }
            guard got > 0 else {
                // 0: every writer closed (EIO from a pty's master): no more to come.
                if got == 0 || errno == EIO {
                    put(index, maskers[index].finish())
                    close(readEnds[index])
                    reading[index] = false
                }
                return false
            }
            let out = buffer.withUnsafeBufferPointer { maskers[index].feed(UnsafeBufferPointer(rebasing: $0[0..<got])) }
            put(index, out)
            return true
        }

        while reading[0] || reading[1] {
            var descriptors = [
                pollfd(fd: reading[0] ? readEnds[0] : -1, events: Int16(POLLIN), revents: 0),
                pollfd(fd: reading[1] ? readEnds[1] : -1, events: Int16(POLLIN), revents: 0),
                pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0),
            ]
            guard poll(&descriptors, 3, -1) >= 0 || errno == EINTR else { break }
            var ending = false
            if descriptors[2].revents != 0 {
                var byte: UInt8 = 0
                while read(wake.read, &byte, 1) == 1 { ending = ending || byte == Self.endByte }
            }
            for index in 0..<2 where reading[index] && descriptors[index].revents != 0 {
                _ = readOnce(index)
            }
            guard ending else { continue }
            // The child has ended: what it wrote is in the pipes now.
            for index in 0..<2 {
                var drained = 0
                while reading[index] && drained < Self.drainLimit && readOnce(index) { drained += buffer.count }
                put(index, maskers[index].finish())
            }
            break
        }
    }

    /// Writes all of `bytes` to `fd`, waiting when it is non-blocking and
    /// full; false when it can take no more (closed, an error).
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let wrote = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if wrote > 0 {
                    offset += wrote
                } else if wrote < 0 && errno == EINTR {
                    continue
                } else if wrote < 0 && errno == EAGAIN {
                    var descriptor = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&descriptor, 1, -1)
                } else {
                    return false
                }
            }
            return true
        }
    }
}

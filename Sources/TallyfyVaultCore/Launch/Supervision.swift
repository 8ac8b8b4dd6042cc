#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif
import CSodium
import Dispatch
import Synchronization

/// Runs a command as our child and stays with it: `exec --keep-fresh`,
/// `exec --mask` and `exec --proxy` all come here, and the launcher's fast
/// path too for a masked `exec` with a fresh token (so it costs a fork, not
/// the full CLI's start).
///
/// INT, TERM, HUP, QUIT, USR1, USR2 and WINCH are forwarded to the child
/// (those a terminal sends to the whole process group reach it once, not
/// twice, unless it moved to a process group of its own); the supervisor
/// ends with the child, with its status (128 + N for a signal). With `mask`,
/// the child's output reaches ours through `MaskedOutput`, which knows every
/// token handed to it (the first and each renewed one). With `keepFresh`,
/// the token also goes to a private file (`TokenFile`, `TALLYFY_TOKEN_FILE`
/// in the child's environment) replaced at each renewal, and the child is
/// told as `KeepFreshOptions.onRenew` says; what renews is the caller's (it
/// needs the HTTP stack): `KeepFresh.start`. The child is started and
/// watched from the main thread, or from a thread of its own when called
/// from any other (the kernel ties the child's death signal to the thread
/// that forked it; see `SupervisedChild`).
package enum Supervision {
    /// What `--keep-fresh` adds to supervising.
    package struct KeepFresh: Sendable {
        package var options: KeepFreshOptions
        /// What is renewed, for the message when it expired ("application
        /// token for profile \"default\"").
        package var what: String
        /// Starts renewing in the background, telling `renewals` of each new
        /// grant and of an expiry `--on-expiry stop` acts on; returns what
        /// stops it.
        package var start: @Sendable (Renewals) -> @Sendable () -> Void

        package init(options: KeepFreshOptions, what: String, start: @escaping @Sendable (Renewals) -> @Sendable () -> Void) {
            self.options = options
            self.what = what
            self.start = start
        }
    }

    /// Bytes on the wake pipe that are not signals (signals are 1…64, with
    /// `WakePipe.fromKernel` perhaps set).
    static let renewedByte: UInt8 = 0xF0
    static let expiredByte: UInt8 = 0xF1

    /// Runs `command` until it ends; returns its status. Throws a
    /// `LaunchError` when it cannot be started (127 / 126), and a
    /// `VaultError` (69) after stopping it when the token expired and
    /// `--on-expiry stop` was asked for. `fixedEnvironment`: the child's
    /// whole environment (`exec --proxy`: no token in it), else it is built
    /// from `parentEnvironment` and the grant.
    package static func run(
        _ command: [String], parentEnvironment: [String: String], first: TokenGrant, mask: Bool,
        fixedEnvironment: [String: String]? = nil, keepFresh: KeepFresh? = nil, note: @escaping @Sendable (String) -> Void = { _ in }
    ) throws -> Int32 {
        try onItsThread {
            try supervise(command, parentEnvironment: parentEnvironment, first: first, mask: mask, fixedEnvironment: fixedEnvironment,
                keepFresh: keepFresh, note: note)
        }
    }

    /// What the renewing side tells the supervising thread.
    package final class Renewals: Sendable {
        private let output: MaskedOutput?
        private let tokenFile: TokenFile?
        private let wake: WakePipe
        private let state: Mutex<(latest: TokenGrant, expiry: (reason: String, at: Date)?)>
        package let note: @Sendable (String) -> Void

        init(first: TokenGrant, output: MaskedOutput?, tokenFile: TokenFile?, wake: WakePipe, note: @escaping @Sendable (String) -> Void) {
            self.output = output
            self.tokenFile = tokenFile
            self.wake = wake
            self.note = note
            state = Mutex((first, nil))
        }

        var latest: TokenGrant { state.withLock { $0.latest } }
        var expiry: (reason: String, at: Date)? { state.withLock { $0.expiry } }

        /// A renewed grant: the masker learns the token before the child can
        /// (through the file or a restart).
        package func renewed(_ grant: TokenGrant) {
            output?.add(grant.token)
            do { try tokenFile?.write(grant.token) } catch let error as VaultError {
                if !Task.isCancelled { note("could not update the token file: \(error.message)") }
                return
            } catch { return }
            state.withLock { $0.latest = grant }
            wake.post(Supervision.renewedByte)
        }

        /// The token expired and could not be renewed, and the command is to
        /// be stopped (`--on-expiry stop`).
        package func expired(_ reason: String, at date: Date) {
            state.withLock { $0.expiry = (reason, date) }
            wake.post(Supervision.expiredByte)
        }
    }

    private static func onItsThread(_ body: @escaping @Sendable () throws -> Int32) throws -> Int32 {
        if tallyfy_is_main_thread() != 0 { return try body() }
        // A pool thread (an async caller) may be retired while the child
        // runs, which would kill the child: use a thread that lives as long.
        let outcome = Mutex<Result<Int32, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        DetachedThread.start {
            let result = Result { try body() }
            outcome.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        return try outcome.withLock { $0! }.get()
    }

    private static func supervise(
        _ command: [String], parentEnvironment: [String: String], first: TokenGrant, mask: Bool,
        fixedEnvironment: [String: String]?, keepFresh: KeepFresh?, note: @escaping @Sendable (String) -> Void
    ) throws -> Int32 {
        // A long-lived process: a reader of its standard error (or any pipe)
        // that goes away must not end it, and its child with it. The child
        // gets SIGPIPE back at its default (`tallyfy_spawn_supervised`).
        signal(SIGPIPE, SIG_IGN)
        let tokenFile = try keepFresh.map { _ in try TokenFile.create(environment: parentEnvironment, note: note) }
        defer { tokenFile?.remove() }
        try tokenFile?.write(first.token)
        let wake = try WakePipe()
        _ = wake.catchSignals(SignalName.forwarded + [SIGCHLD])
        let output = try mask ? MaskedOutput(secrets: [first.token]) : nil
        // However the supervisor ends, what the child wrote goes out first.
        defer { output?.finish() }
        func environment(_ grant: TokenGrant) -> [String: String] {
            if let fixedEnvironment { return fixedEnvironment }
            guard let tokenFile else { return ChildEnvironment.build(parent: parentEnvironment, grant: grant) }
            return ChildEnvironment.build(parent: parentEnvironment, grant: grant, tokenFile: tokenFile.path)
        }
        func start(_ grant: TokenGrant) throws -> SupervisedChild {
            try SupervisedChild.start(command, environment: environment(grant), stdio: output?.childStdio)
        }
        var child = try start(first)

        let renewals = Renewals(first: first, output: output, tokenFile: tokenFile, wake: wake, note: note)
        let stopRenewing = keepFresh.map { $0.start(renewals) }
        defer { stopRenewing?() }
        let options = keepFresh?.options ?? KeepFreshOptions()

        var stopDeadline: Date? = nil
        var restarting = false
        var terminating = false
        var expiry: (reason: String, at: Date)? = nil
        while true {
            switch child.change(reportingStops: output?.relaysTerminal == true) {
            case nil: break
            case .stopped?:
                // ^Z stopped the child on its own terminal: give ours back
                // and stop as a shell expects, and take the child along
                // when we are continued (`fg`).
                output?.suspendTerminal()
                stopUntilContinued()
                output?.resumeTerminal()
                output?.continueForeground()
                child.send(SIGCONT)
                continue
            case .ended(let status)?:
                if let expiry, let keepFresh {
                    throw VaultError(.unavailable,
                        "the \(keepFresh.what) expired at \(ChildEnvironment.rfc3339(expiry.at)) and could not be renewed (\(expiry.reason)); the command was stopped (--on-expiry stop)",
                        hint: "check that Tallyfy is reachable and the credentials are valid (`tallyfy-vault login`), then start the command again")
                }
                guard restarting && !terminating else { return status }
                restarting = false
                stopDeadline = nil
                child = try start(renewals.latest)
                continue
            }
            if let deadline = stopDeadline, Date() >= deadline {
                child.send(SIGKILL)
                stopDeadline = nil
            }
            for byte in wake.wait(timeout: stopDeadline.map { $0.timeIntervalSinceNow }) {
                switch byte {
                case renewedByte:
                    guard !terminating && expiry == nil else { continue }
                    switch options.onRenew {
                    case .none: break
                    case .signal(let number): if !restarting { child.send(number) }
                    case .restart:
                        guard !restarting else { continue }
                        restarting = true
                        child.send(SIGTERM)
                        stopDeadline = Date().addingTimeInterval(options.stopGrace)
                    }
                case expiredByte:
                    expiry = renewals.expiry
                    child.send(SIGTERM)
                    stopDeadline = Date().addingTimeInterval(options.stopGrace)
                default:
                    let number = Int32(byte & ~WakePipe.fromKernel)
                    guard number != SIGCHLD else { continue }
                    // With a pty, the child's terminal takes the new size
                    // and signals the child itself.
                    if number == SIGWINCH, output?.windowChanged() == true { continue }
                    if number == SIGINT || number == SIGTERM || number == SIGQUIT { terminating = true }
                    // A terminal's signal reached the child too, unless it
                    // left our process group (then it is passed on).
                    if byte & WakePipe.fromKernel == 0 || getpgid(child.pid) != getpgrp() { child.send(number) }
                }
            }
        }
    }

    /// Stops this process as ^Z would (SIGTSTP: a shell reports the job
    /// stopped) and returns once it is continued. This thread may have been
    /// made with SIGTSTP blocked (the runtime's threads block most signals),
    /// so it is unblocked here: sent to the thread itself, it stops the
    /// process before `raise` returns. Ignored SIGTSTP, or a process group
    /// with no shell to continue it (orphaned), returns at once.
    static func stopUntilContinued() {
        var stop = sigset_t()
        var previous = sigset_t()
        sigemptyset(&stop)
        sigaddset(&stop, SIGTSTP)
        pthread_sigmask(SIG_UNBLOCK, &stop, &previous)
        raise(SIGTSTP)
        pthread_sigmask(SIG_SETMASK, &previous, nil)
    }
}

/// A thread of its own for a body that blocks (a child's life, a relay):
/// a pthread, because the core library has no Foundation `Thread` (the
/// launcher links FoundationEssentials only).
enum DetachedThread {
    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    static func start(_ body: @escaping @Sendable () -> Void) {
        var thread = pthread_t()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        let started = pthread_create(&thread, &attributes, { context in
            Unmanaged<Body>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        // Out of threads: nothing else can be done here.
        precondition(started == 0, "could not start a thread: \(String(cString: strerror(started)))")
    }
}

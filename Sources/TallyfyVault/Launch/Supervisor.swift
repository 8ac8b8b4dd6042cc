import Foundation
import Synchronization
import TallyfyVaultCore

/// What `exec --keep-fresh` does when the token is renewed, and when it has
/// expired and cannot be renewed.
package struct KeepFreshOptions: Sendable, Equatable {
    /// `--on-renew`: what the child is told after each renewal.
    package enum OnRenew: Sendable, Equatable {
        /// Nothing: the child reads `TALLYFY_TOKEN_FILE` when it needs to.
        case none
        /// `signal:NAME`: this signal, once per renewal.
        case signal(Int32)
        /// SIGTERM, up to `stopGrace` to exit, then SIGKILL; then the command
        /// is started again with the new token in its environment.
        case restart

        /// `none`, `signal:NAME` (`signal:HUP`, `signal:SIGUSR1`) or `restart`.
        package init(parsing text: String) throws {
            switch text {
            case "none": self = .none
            case "restart": self = .restart
            default:
                let reloads = SignalName.reloads.joined(separator: ", ")
                guard text.hasPrefix("signal:") else {
                    throw VaultError(.usage, "--on-renew \(text) is not one of none, signal:NAME, restart",
                        hint: "e.g. --on-renew signal:HUP; NAME is one of \(reloads)")
                }
                let name = String(text.dropFirst("signal:".count))
                guard let number = SignalName.number(name) else {
                    // Known but no reload (KILL, STOP, PIPE, SEGV, TERM…): it would end or freeze the command at the first renewal.
                    if SignalName.isSignal(name) {
                        throw VaultError(.usage, "--on-renew \(text) would stop the command at its first renewal, not make it reload",
                            hint: "use --on-renew restart to stop and start the command with the new token; signal:NAME takes \(reloads)")
                    }
                    throw VaultError(.usage, "--on-renew \(text) is not one of none, signal:NAME, restart",
                        hint: "e.g. --on-renew signal:HUP; NAME is one of \(reloads)")
                }
                self = .signal(number)
            }
        }
    }

    /// `--on-expiry`: when the token has expired and renewing still fails.
    package enum OnExpiry: String, Sendable, Equatable, CaseIterable {
        /// Keep the child running (with the expired token) and keep retrying.
        case keep
        /// Stop the child (as for a restart) and exit 69.
        case stop
    }

    package var onRenew: OnRenew
    package var onExpiry: OnExpiry
    /// How long a child has to exit after SIGTERM before it gets SIGKILL.
    package var stopGrace: TimeInterval

    package init(onRenew: OnRenew = .none, onExpiry: OnExpiry = .keep, stopGrace: TimeInterval = 10) {
        self.onRenew = onRenew
        self.onExpiry = onExpiry
        self.stopGrace = stopGrace
    }
}

/// `exec --keep-fresh`: runs a command as a child and keeps its token fresh.
///
/// The token goes to a private file (`TokenFile`, `TALLYFY_TOKEN_FILE` in the
/// child's environment) that a `TokenStream` replaces atomically at every
/// renewal; the child is told as `KeepFreshOptions.onRenew` says. INT, TERM,
/// HUP, QUIT, USR1, USR2 and WINCH are forwarded to the child (those a
/// terminal sends to the whole process group reach it once, not twice,
/// unless it moved to a process group of its own); the
/// supervisor ends with the child, with its status (128 + N for a signal),
/// and removes the token file. It keeps no key while it waits: `source`
/// reads the unlock secrets again at each renewal. The child is started and
/// watched from the main thread, or from a thread of its own when called
/// from any other (the kernel ties the child's death signal to the thread
/// that forked it; see `SupervisedChild`).
package enum Supervisor {
    /// Bytes on the wake pipe that are not signals (signals are 1…64, with
    /// `WakePipe.fromKernel` perhaps set).
    static let renewedByte: UInt8 = 0xF0
    static let expiredByte: UInt8 = 0xF1

    /// Runs `command` until it ends; returns its status. Throws a
    /// `LaunchError` when it cannot be started (127 / 126), and a
    /// `VaultError` (69) after stopping it when the token expired and
    /// `--on-expiry stop` was asked for. With `mask`, the command's output
    /// reaches ours through `MaskedOutput`, which knows every token handed
    /// to it (the first and each renewed one).
    package static func run(
        _ command: [String], parentEnvironment: [String: String], request: TokenRequest, first: TokenGrant,
        source: TokenSource, options: KeepFreshOptions, mask: Bool = false, schedule: RenewalSchedule = .standard,
        note: @escaping @Sendable (String) -> Void
    ) throws -> Int32 {
        let renewal = Renewal(request: request, source: source, options: options, schedule: schedule)
        return try onItsThread {
            try supervise(command, parentEnvironment: parentEnvironment, first: first, renewal: renewal, mask: mask, note: note)
        }
    }

    /// `exec --mask` without `--keep-fresh`: runs `command` with `grant`'s
    /// token and copies its output through the masker; no renewal, no token
    /// file. Returns its status, or throws a `LaunchError` (127 / 126).
    package static func runMasked(_ command: [String], parentEnvironment: [String: String], grant: TokenGrant) throws -> Int32 {
        try onItsThread {
            try supervise(command, parentEnvironment: parentEnvironment, first: grant, renewal: nil, mask: true, note: { _ in })
        }
    }

    /// `exec --proxy`: runs `command` in `environment` (the proxy's address
    /// and capability, no token: `ChildEnvironment.buildProxied`), with
    /// signals forwarded as for `--keep-fresh`; with `mask`, its output
    /// goes through the masker, which knows the capability. No renewal here
    /// (the proxy renews), no token file. Returns its status, or throws a
    /// `LaunchError` (127 / 126).
    package static func runProxied(_ command: [String], environment: [String: String], capability: String, mask: Bool) throws -> Int32 {
        try onItsThread {
            let shown = TokenGrant(profile: "", orgID: "", apiURL: "", token: capability, expiresAt: .distantFuture, user: nil)
            return try supervise(command, parentEnvironment: environment, first: shown, renewal: nil, mask: mask, fixedEnvironment: environment,
                note: { _ in })
        }
    }

    /// What `--keep-fresh` adds to supervising.
    struct Renewal: Sendable {
        var request: TokenRequest
        var source: TokenSource
        var options: KeepFreshOptions
        var schedule: RenewalSchedule
    }

    private static func onItsThread(_ body: @escaping @Sendable () throws -> Int32) throws -> Int32 {
        if Thread.isMainThread { return try body() }
        // A pool thread (an async caller) may be retired while the child
        // runs, which would kill the child: use a thread that lives as long.
        let outcome = Mutex<Result<Int32, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            let result = Result { try body() }
            outcome.withLock { $0 = result }
            done.signal()
        }
        thread.start()
        done.wait()
        return try outcome.withLock { $0! }.get()
    }

    private static func supervise(
        _ command: [String], parentEnvironment: [String: String], first: TokenGrant, renewal: Renewal?, mask: Bool,
        fixedEnvironment: [String: String]? = nil, note: @escaping @Sendable (String) -> Void
    ) throws -> Int32 {
        // A long-lived process: a reader of its standard error (or any pipe)
        // that goes away must not end it, and its child with it. The child
        // gets SIGPIPE back at its default (`tallyfy_spawn_supervised`).
        signal(SIGPIPE, SIG_IGN)
        let tokenFile = try renewal.map { _ in try TokenFile.create(environment: parentEnvironment, note: note) }
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

        let shared = Shared(first)
        let what = renewal.map { describe($0.request) } ?? ""
        let renewer = renewal.map { renewal in
            Task {
                let stream = TokenStream(
                    request: renewal.request, source: renewal.source, initial: first, schedule: renewal.schedule, environment: parentEnvironment)
                var handedOver = false  // the first event is `first`, which the child already has
                do {
                    for try await event in stream {
                        if Task.isCancelled { return }
                        switch event {
                        case .token(let grant):
                            guard handedOver else {
                                handedOver = true
                                continue
                            }
                            // The masker learns the token before the child can.
                            output?.add(grant.token)
                            do { try tokenFile?.write(grant.token) } catch let error as VaultError {
                                if !Task.isCancelled { note("could not update the token file: \(error.message)") }
                                continue
                            }
                            shared.renewed(grant)
                            wake.post(renewedByte)
                        case .renewalFailed(let failure):
                            if Task.isCancelled { return }
                            note(failureLine(failure, what: what))
                            if failure.tokenHasExpired && renewal.options.onExpiry == .stop {
                                shared.expired(failure.reason, at: failure.current.expiresAt)
                                wake.post(expiredByte)
                                return
                            }
                        }
                    }
                } catch {}  // only the first grant throws, and it was given
            }
        }
        defer { renewer?.cancel() }
        let options = renewal?.options ?? KeepFreshOptions()

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
                if let expiry {
                    throw VaultError(.unavailable,
                        "the \(what) expired at \(ChildEnvironment.rfc3339(expiry.at)) and could not be renewed (\(expiry.reason)); the command was stopped (--on-expiry stop)",
                        hint: "check that Tallyfy is reachable and the credentials are valid (`tallyfy-vault login`), then start the command again")
                }
                guard restarting && !terminating else { return status }
                restarting = false
                stopDeadline = nil
                child = try start(shared.latest)
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
                    expiry = shared.expiry
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

    /// One line per failed renewal, never a secret.
    static func failureLine(_ failure: TokenStream.RenewalFailure, what: String) -> String {
        let next = max(0, Int(failure.retryAt.timeIntervalSinceNow.rounded(.up)))
        let state = failure.tokenHasExpired
            ? "the current one expired at \(ChildEnvironment.rfc3339(failure.current.expiresAt))"
            : "the command keeps the current one, valid until \(ChildEnvironment.rfc3339(failure.current.expiresAt))"
        return "could not renew the \(what) (\(failure.reason)); \(state); next attempt in \(next)s"
    }

    package static func describe(_ request: TokenRequest) -> String {
        request.user.map { "user token for \($0)" } ?? "application token for profile \"\(request.profile)\""
    }

    /// What the renewing task tells the supervising thread.
    final class Shared: Sendable {
        private let state: Mutex<(latest: TokenGrant, expiry: (reason: String, at: Date)?)>

        init(_ first: TokenGrant) { state = Mutex((first, nil)) }

        var latest: TokenGrant { state.withLock { $0.latest } }
        var expiry: (reason: String, at: Date)? { state.withLock { $0.expiry } }
        func renewed(_ grant: TokenGrant) { state.withLock { $0.latest = grant } }
        func expired(_ reason: String, at date: Date) { state.withLock { $0.expiry = (reason, date) } }
    }
}

import ArgumentParser
import Foundation
import TallyfyVault

/// `proxy [--detach] [--allow …]`, `proxy status`, `proxy stop`: the
/// credential proxy of `exec --proxy`, standing, for tools that are not the
/// vault's children.
struct ProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Run a standing credential proxy: tools get its address and a capability, never the token.",
        discussion: """
            Prints TALLYFY_API_URL, TALLYFY_BASE_URL, TALLYFY_API_BASE_URL (the proxy on 127.0.0.1), \
            TALLYFY_TOKEN and TALLYFY_API_TOKEN (a capability for this proxy only), TALLYFY_ORG_ID, \
            TALLYFY_VAULT_PROXY_SOCK and TALLYFY_VAULT_PROXY_PID as shell lines, as `agent --detach` does: \
            eval "$(tallyfy-vault proxy --detach)". Over TCP anyone who has the capability can use Tallyfy \
            through the proxy (within the --allow rules) while it runs; over its Unix socket \
            (TALLYFY_VAULT_PROXY_SOCK, e.g. curl --unix-socket) only processes of your own uid can, \
            without the capability. Nobody can take the token from it. \
            `proxy status` shows it and its counts per listener; `proxy stop` stops it. One standing proxy \
            per user (its state is $XDG_RUNTIME_DIR/tallyfy-vault/proxy.json, its socket proxy.sock beside it).
            """,
        subcommands: [Run.self, Status.self, Stop.self],
        defaultSubcommand: Run.self)

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the proxy (the default).")

        @OptionGroup var global: GlobalOptions
        @OptionGroup var options: TokenOptions
        @Flag(help: "Start in the background and print the variables to eval.") var detach = false
        @Option(name: .customLong("allow"), help: ArgumentHelp(
            "Forward only these requests (repeatable), as exec --proxy --allow. Default: everything below the API URL.",
            valueName: "METHOD:PATH-GLOB"))
        var allow: [String] = []
        /// The detached proxy writes its variables to this descriptor once it listens.
        @Option(help: .hidden) var readyFD: Int32?

        func run() async throws {
            let context = global.context
            let rules = try allow.map(ProxyAllowRule.init(parsing:))
            let statePath = StandingProxyState.path(environment: context.environment)
            if let running = try StandingProxyState.read(from: statePath) {
                throw VaultError(.usage, "a proxy is already running (pid \(running.pid), \(running.url))",
                    hint: "use it, or stop it with `tallyfy-vault proxy stop`")
            }
            if detach {
                Output.line(try ProxyDetach.start(arguments: Array(CommandLine.arguments.dropFirst()), environment: context.environment))
                return
            }
            ProcessHardening.protect()
            // Before the socket exists: a SIGTERM from here on removes it.
            let stopping = ProxySignals.stopOnSignals()
            let folder = try RuntimeFolder.prepare(environment: context.environment)
            if let fallback = folder.fallback { Output.note(fallback) }
            let running = try await ProxyLaunch.start(
                context: context, selection: options.selection, rules: rules, what: "proxy",
                unixSocketPath: StandingProxyState.socketPath(in: folder.path))
            let pid = getpid()
            let socket = running.proxy.unixSocketPath
            let lines = StandingProxyState.shellVariables(
                url: running.proxy.url, capability: running.proxy.capability.value, orgID: running.grant.orgID, pid: pid, socket: socket)
            var state = StandingProxyState(
                pid: pid, processStart: StandingProxyState.processStartTime(pid) ?? 0, url: running.proxy.url, socket: socket,
                profile: running.grant.profile, startedAt: Date(), counts: running.proxy.counters.snapshot)
            do {
                try state.write(to: statePath)
            } catch {
                await running.proxy.stop()  // its socket file goes with it
                throw error
            }
            if let readyFD {
                let text = lines + "\n"
                _ = text.withCString { write(readyFD, $0, strlen($0)) }
                close(readyFD)
            } else {
                Output.line(lines)
                fflush(nil)
            }
            // Woken often, so a signal stops it at once (`proxy stop` waits
            // for that); the counts are written at most once a second.
            var written = Date()
            while !stopping.isCancelled {
                try? await Task.sleep(for: .milliseconds(100))
                let counts = running.proxy.counters.snapshot
                if counts != state.counts && Date().timeIntervalSince(written) >= 1 {
                    state.counts = counts
                    try? state.write(to: statePath)
                    written = Date()
                }
            }
            await running.proxy.stop()
            unlink(statePath)
            Output.note("proxy stopped: \(running.proxy.counters.snapshot.line)")
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status", abstract: "Show the standing proxy, where it listens, and its counts per listener.")
        @OptionGroup var global: GlobalOptions

        func run() throws {
            let path = StandingProxyState.path(environment: global.context.environment)
            guard let state = try StandingProxyState.read(from: path) else {
                throw VaultError(.unavailable, "no proxy is running", hint: "start one with `eval \"$(tallyfy-vault proxy --detach)\"`")
            }
            for line in state.statusLines { Output.line(line) }
        }
    }

    struct Stop: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "stop", abstract: "Stop the standing proxy (its port closes, its socket file goes); prints the `unset` lines to eval.")
        @OptionGroup var global: GlobalOptions

        func run() throws {
            let path = StandingProxyState.path(environment: global.context.environment)
            guard let state = try StandingProxyState.read(from: path) else {
                throw VaultError(.unavailable, "no proxy is running")
            }
            kill(state.pid, SIGTERM)
            // Done when it is gone, so a script can start another at once.
            let deadline = Date().addingTimeInterval(10)
            while StandingProxyState.processStartTime(state.pid) == state.processStart && Date() < deadline { usleep(10_000) }
            Output.note("stopped the proxy (pid \(state.pid)): \(state.counts.line)")
            Output.line(StandingProxyState.unsetLines)
        }
    }
}

/// SIGTERM and SIGINT end a standing proxy's wait.
enum ProxySignals {
    final class Stopping: @unchecked Sendable {
        private let lock = NSLock()
        private var cancelled = false
        var sources: [DispatchSourceSignal] = []
        var isCancelled: Bool { lock.withLock { cancelled } }
        func cancel() { lock.withLock { cancelled = true } }
    }

    static func stopOnSignals() -> Stopping {
        let stopping = Stopping()
        stopping.sources = [SIGTERM, SIGINT, SIGHUP].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { stopping.cancel() }
            source.resume()
            return source
        }
        return stopping
    }
}

/// `proxy --detach`: the same command in the background, in its own session,
/// its log in `proxy.log` beside its state; it hands its variables back on a
/// pipe once it listens.
enum ProxyDetach {
    static func start(arguments: [String], environment: [String: String]) throws -> String {
        let folder = try RuntimeFolder.prepare(environment: environment).path
        let logPath = folder + "/proxy.log"
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw VaultError(.io, "could not create a pipe for the proxy") }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        let childArguments = arguments.filter { $0 != "--detach" } + ["--ready-fd", "3"]
        let pid: pid_t
        do {
            pid = try ThisProgram.startDetached("proxy", arguments: childArguments, environment: environment, logPath: logPath, descriptor3: ends[1])
        } catch {
            close(ends[1])
            close(ends[0])
            throw error
        }
        close(ends[1])
        defer { close(ends[0]) }
        var output = Data()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let got = read(ends[0], &buffer, buffer.count)
            if got > 0 { output.append(contentsOf: buffer[..<got]) } else if got == 0 || errno != EINTR { break }
        }
        guard !output.isEmpty else {
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8))?.split(separator: "\n").last.map(String.init) ?? ""
            throw VaultError(.configuration, "the proxy stopped at once\(log.isEmpty ? "" : ": \(log)")", hint: "its log is \(logPath)")
        }
        return String(decoding: output, as: UTF8.self).trimmingCharacters(in: .newlines)
    }
}

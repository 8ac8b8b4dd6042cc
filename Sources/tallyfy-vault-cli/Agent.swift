import ArgumentParser
import Foundation
import TallyfyVault

/// `agent`: unlock once, serve tokens over a private socket, renew in the
/// background. `agent status`, `agent lock`, `agent stop` talk to a running one.
struct Agent: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Unlock the vault once and hand out tokens in a millisecond, renewing them in the background.",
        discussion: """
            exec, token and export ask a running agent first (TALLYFY_VAULT_AGENT_SOCK, else the default \
            socket), with no key derivation and no key file read, and fall back to the vault when there is \
            no agent, it is locked, or it holds another vault. On a workstation: \
            eval "$(tallyfy-vault agent --detach)". On a server: tools/systemd/tallyfy-vault-agent.service.
            """,
        subcommands: [Run.self, AgentStatus.self, AgentLock.self, AgentStop.self],
        defaultSubcommand: Run.self)

    struct SocketOption: ParsableArguments {
        @Option(help: ArgumentHelp("The agent's socket (default: TALLYFY_VAULT_AGENT_SOCK, else $XDG_RUNTIME_DIR/tallyfy-vault/agent.sock).", valueName: "PATH"))
        var socket: String?

        func path(_ environment: [String: String]) -> String {
            socket ?? AgentSocket.path(environment: environment)
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the agent (the default).")

        @OptionGroup var global: GlobalOptions
        @OptionGroup var socketOption: SocketOption
        @Flag(help: "Start in the background and print the variables to eval, as ssh-agent does.") var detach = false
        @Option(help: ArgumentHelp("Forget the key after this long without a token request; 0 = never.", valueName: "DURATION"))
        var idleTimeout = "8h"
        @Option(help: ArgumentHelp("Forget the key this long after starting; 0 = never.", valueName: "DURATION"))
        var maxLifetime = "24h"
        /// The detached agent's key arrives on this descriptor from the process that unlocked.
        @Option(help: .hidden) var keyFD: Int32?

        func run() async throws {
            // A foreground agent keeps running for hours: glibc overwrites what
            // it frees from its first instruction on (AgentMemory).
            if !detach { AgentMemory.restartWithFreedMemoryOverwritten(log: { Output.note("agent: \($0)") }) }
            var agent = try await prepare()
            // Unlocked: the passphrase variable goes, with every copy of the
            // command's environment (`prepare` kept none).
            AgentMemory.forgetPassphraseVariable()
            if detach {
                let pid = try AgentLauncher.detach(
                    unlocker: agent.unlocker.take()!, socketPath: agent.socketPath, vaultPath: agent.vaultPath,
                    idleTimeout: idleTimeout, maxLifetime: maxLifetime, environment: agent.environment)
                Output.line(AgentLauncher.shellVariables(socketPath: agent.socketPath, pid: pid))
                AgentOptions.announce(pid: pid, socketPath: agent.socketPath)
                return
            }
            // The server holds the key from here on, alone: `agent lock` must
            // leave no reference to it behind (this command's own kept it alive).
            let server = AgentServer(
                configuration: .init(socketPath: agent.socketPath, vaultPath: agent.vaultPath, idleTimeout: agent.idle,
                    maxLifetime: agent.lifetime, environment: agent.environment),
                unlocker: agent.unlocker.take()!, log: { Output.note("agent: \($0)") })
            let signals = AgentLauncher.stopOnSignals(server)
            defer { withExtendedLifetime(signals) {} }
            let socketPath = agent.socketPath
            try await server.run(ready: {
                AgentOptions.announce(pid: getpid(), socketPath: socketPath)
                AgentLauncher.notifySystemd()
            })
        }

        /// What the agent runs with, once unlocked.
        private struct Prepared {
            var socketPath: String
            var vaultPath: String
            var idle: TimeInterval?
            var lifetime: TimeInterval?
            /// Taken (set to nil) by whoever keeps it.
            var unlocker: VaultUnlocker?
            /// The command's environment without `TALLYFY_VAULT_PASSPHRASE`.
            var environment: [String: String]
        }

        /// Checks, unlocks and returns what the agent needs; the command's
        /// context (whose environment may hold the passphrase) ends here, so
        /// nothing the agent keeps refers to it.
        private func prepare() async throws -> Prepared {
            let context = global.context
            let environment = context.environment
            let (socketPath, folderNote) = try AgentSocket.listeningPath(explicit: socketOption.socket, environment: environment)
            if let folderNote { Output.note(folderNote) }
            let idle = try AgentOptions.duration(idleTimeout)
            let lifetime = try AgentOptions.duration(maxLifetime)
            ProcessHardening.protect()
            try await context.store.checkAccess()
            guard let vaultPath = AgentClient.resolved(context.vaultPath) else {
                throw VaultError(.notFound, "the vault \(context.vaultPath) does not exist")
            }
            if let live = try? AgentClient(socketPath: socketPath).ask(.init(op: .status)), live.ok {
                throw VaultError(.usage, "an agent is already running on \(socketPath) (pid \(live.status?.pid ?? 0))",
                    hint: "use it, stop it with `tallyfy-vault agent stop`, or give another --socket")
            }
            let unlocker = try await AgentOptions.unlock(context: context, vaultPath: vaultPath, keyFD: keyFD)
            return Prepared(socketPath: socketPath, vaultPath: vaultPath, idle: idle, lifetime: lifetime, unlocker: unlocker,
                environment: environment.filter { $0.key != UnlockSources.passphraseVariable })
        }
    }

    struct AgentStatus: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "status", abstract: "Show whether an agent runs and holds a key.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var socketOption: SocketOption

        func run() throws {
            let path = socketOption.path(global.context.environment)
            let answer = try AgentOptions.ask(.status, socketPath: path)
            guard let status = answer.status else { throw VaultError(.unavailable, "the agent on \(path) gave no status") }
            Output.line(AgentOptions.describe(status, socketPath: path))
        }
    }

    struct AgentLock: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "lock", abstract: "Make the agent forget the key (it keeps running, locked).")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var socketOption: SocketOption

        func run() throws {
            let path = socketOption.path(global.context.environment)
            _ = try AgentOptions.ask(.lock, socketPath: path)
            Output.note("the agent on \(path) forgot the key; clients unlock the vault themselves until it is started again")
        }
    }

    struct AgentStop: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "stop", abstract: "Stop the agent (it forgets the key).",
            discussion: """
                Prints the `unset` lines for the variables `agent --detach` set, as `ssh-agent -k` does: \
                eval "$(tallyfy-vault agent stop)". Nothing is printed to unset when --socket names another \
                agent than TALLYFY_VAULT_AGENT_SOCK.
                """)
        @OptionGroup var global: GlobalOptions
        @OptionGroup var socketOption: SocketOption

        func run() throws {
            let environment = global.context.environment
            let path = socketOption.path(environment)
            _ = try AgentOptions.ask(.stop, socketPath: path)
            // Done when its socket is gone, so a script can start another at once.
            let deadline = Date().addingTimeInterval(10)
            while FileManager.default.fileExists(atPath: path) && Date() < deadline { usleep(10_000) }
            Output.note("stopped the agent on \(path)")
            let named = environment[AgentSocket.variable].flatMap { $0.isEmpty ? nil : $0 }
            if named == nil || named == path {
                Output.line("unset \(AgentSocket.variable);\nunset \(AgentSocket.pidVariable);")
            }
        }
    }
}

/// The parts of `agent` that are plain functions, kept out of the commands.
enum AgentOptions {
    /// `0` (or `none`) means never.
    static func duration(_ text: String) throws -> TimeInterval? {
        if text == "0" || text == "none" { return nil }
        return try DurationText.parse(text)
    }

    /// The unlocker the agent keeps: only the data key, found with the usual
    /// unlock sources (prompt included) or handed over on `keyFD`.
    static func unlock(context: CommandContext, vaultPath: String, keyFD: Int32?) async throws -> VaultUnlocker {
        let store = VaultStore(path: vaultPath, environment: context.environment, remote: context.remote)
        if let keyFD {
            var key = SecretBytes(count: 32)
            let got = key.withUnsafeMutableBytes { read(keyFD, $0.baseAddress!, 32) }
            close(keyFD)
            guard got == 32 else { throw VaultError(.usage, "the agent's key descriptor carried no key") }
            return try await VaultUnlocker.withDataKey(key, for: store)
        }
        let full = VaultUnlocker(secrets: try await context.secretsToOpen())
        _ = try await store.open(with: full)
        guard let keyOnly = full.keepingOnlyTheDataKey() else { throw VaultError(.refused, "the vault could not be unlocked") }
        return keyOnly
    }

    /// The one line that says an agent started (standard error, so that
    /// `eval "$(tallyfy-vault agent --detach)"` still reads only variables).
    static func announce(pid: pid_t, socketPath: String) {
        Output.note("agent pid \(pid), socket \(socketPath)")
    }

    static func ask(_ op: AgentProtocol.Operation, socketPath: String) throws -> AgentProtocol.Answer {
        do {
            let answer = try AgentClient(socketPath: socketPath).ask(.init(op: op))
            guard answer.ok else { throw VaultError(.unavailable, "the agent on \(socketPath) answered: \(answer.message ?? "an error")") }
            return answer
        } catch let error as AgentError {
            let reason: String
            switch error {
            case .unavailable(let text), .connection(let text): reason = text
            }
            throw VaultError(.unavailable, "no agent answers on \(socketPath): \(reason)",
                hint: "start one with `eval \"$(tallyfy-vault agent --detach)\"`")
        }
    }

    static func describe(_ status: AgentProtocol.Status, socketPath: String) -> String {
        func limit(_ value: Double?) -> String { value.map { DurationText.format($0) } ?? "none" }
        return """
            agent: running, pid \(status.pid), on \(socketPath)
            vault: \(status.vault)
            key: \(status.locked ? "forgotten (locked): clients unlock the vault themselves" : "held")
            started: \(ChildEnvironment.rfc3339(Date(timeIntervalSince1970: status.startedAt)))
            idle timeout: \(limit(status.idleTimeout)), max lifetime: \(limit(status.maxLifetime))
            served: \(status.served) token requests, renewed: \(status.renewals) tokens
            """
    }
}

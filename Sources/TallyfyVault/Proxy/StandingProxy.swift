import Foundation
import TallyfyVaultCore

/// A standing proxy (`tallyfy-vault proxy`), for tools that are not children
/// of the vault (an MCP server, an AI agent's shell): what `proxy status` and
/// `proxy stop` find of it.
///
/// It keeps `proxy.json` in the private runtime folder (`RuntimeFolder`,
/// 0700, the agent's): its pid, the pid's start time (so a recycled pid is
/// never signalled), its address, profile and counts, rewritten at most once
/// a second while they change, removed when it stops. The file holds no
/// capability and no token: `proxy status` needs neither.
///
/// Its Unix socket, `proxy.sock`, is in the same folder: for processes of
/// the user's own uid only, without the capability.
package struct StandingProxyState: Codable, Sendable, Equatable {
    package var pid: Int32
    /// `/proc/PID/stat` field 22: the process's start time in clock ticks.
    package var processStart: UInt64
    package var url: String
    /// The Unix socket it also listens on (absent in a state file written
    /// before it had one).
    package var socket: String?
    package var profile: String
    package var startedAt: Date
    package var counts: ProxyCounters.Snapshot

    package init(
        pid: Int32, processStart: UInt64, url: String, socket: String?, profile: String, startedAt: Date, counts: ProxyCounters.Snapshot
    ) {
        self.pid = pid
        self.processStart = processStart
        self.url = url
        self.socket = socket
        self.profile = profile
        self.startedAt = startedAt
        self.counts = counts
    }

    /// `$XDG_RUNTIME_DIR/tallyfy-vault/proxy.json` (or the `/tmp` fallback).
    package static func path(environment: [String: String]) -> String {
        RuntimeFolder.sharedPath(environment: environment) + "/proxy.json"
    }

    /// `proxy.sock` in `folder`, the runtime folder `RuntimeFolder.prepare` gave.
    package static func socketPath(in folder: String) -> String { folder + "/proxy.sock" }

    /// Written to a temporary name and renamed, so a reader sees a whole file.
    package func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode(self)
        let temporary = path + ".\(getpid()).tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw VaultError(.io, "could not write \(temporary)")
        }
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw VaultError(.io, "could not write \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// The state of a proxy that still runs; `nil` when there is no file, or
    /// its process is gone (the stale file is then removed).
    package static func read(from path: String) throws -> StandingProxyState? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        guard let state = try? decoder.decode(StandingProxyState.self, from: data) else {
            throw VaultError(.corrupt, "\(path) is not a proxy's state file", hint: "remove it if no proxy runs")
        }
        guard processStartTime(state.pid) == state.processStart else {
            unlink(path)
            return nil
        }
        return state
    }

    /// `/proc/PID/stat` field 22, or `nil` when there is no such process, or
    /// it has ended and waits to be reaped (a zombie: where nothing reaps
    /// orphans, as in some containers, a stopped detached proxy stays one).
    package static func processStartTime(_ pid: Int32) -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        // Fields after the command name (which may hold spaces): state is field 3.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, fields[0] != "Z", fields[0] != "X" else { return nil }
        return UInt64(fields[19])
    }

    /// The lines `proxy` prints for `eval`, as `agent --detach` does.
    package static func shellVariables(url: String, capability: String, orgID: String, pid: Int32, socket: String?) -> String {
        let variables = [
            ("TALLYFY_API_URL", url), ("TALLYFY_BASE_URL", url), ("TALLYFY_API_BASE_URL", url),
            ("TALLYFY_TOKEN", capability), ("TALLYFY_API_TOKEN", capability), ("TALLYFY_ORG_ID", orgID),
        ] + (socket.map { [(socketVariable, $0)] } ?? []) + [(pidVariable, String(pid))]
        return variables.map { "\($0.0)=\(AgentLauncher.shellQuoted($0.1)); export \($0.0);" }.joined(separator: "\n")
    }

    /// What `proxy stop` prints for `eval`.
    package static let unsetLines = ["TALLYFY_API_URL", "TALLYFY_BASE_URL", "TALLYFY_API_BASE_URL", "TALLYFY_TOKEN", "TALLYFY_API_TOKEN",
        socketVariable, pidVariable].map { "unset \($0);" }.joined(separator: "\n")

    package static let pidVariable = "TALLYFY_VAULT_PROXY_PID"
    /// The Unix socket: `curl --unix-socket "$TALLYFY_VAULT_PROXY_SOCK" "$TALLYFY_API_URL/…"`.
    package static let socketVariable = "TALLYFY_VAULT_PROXY_SOCK"

    /// What `proxy status` prints: the proxy, then each listener with its
    /// share of the counts, then the totals.
    package var statusLines: [String] {
        var lines = ["proxy pid \(pid) for profile \"\(profile)\", since \(ChildEnvironment.rfc3339(startedAt))"]
        lines.append("  on \(url) (TCP, with the capability): \(counts.line(for: .tcp))")
        if let socket {
            lines.append("  on \(socket) (Unix socket, uid \(geteuid()) only, no capability needed): \(counts.line(for: .unix))")
        }
        lines.append("  in all: \(counts.line)")
        return lines
    }
}

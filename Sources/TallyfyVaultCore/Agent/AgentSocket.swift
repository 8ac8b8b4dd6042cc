#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Where the agent's socket is, and the checks both ends make on it.
///
/// As ssh-agent and gpg-agent do: the socket sits in a private folder
/// (0700, owned by the user) under `$XDG_RUNTIME_DIR`; the agent serves only
/// peers of its own uid (`SO_PEERCRED`), and a client talks only to an agent
/// of its own uid, through a socket file the user owns.
package enum AgentSocket {
    package static let variable = "TALLYFY_VAULT_AGENT_SOCK"
    package static let pidVariable = "TALLYFY_VAULT_AGENT_PID"

    /// `$XDG_RUNTIME_DIR/tallyfy-vault/agent.sock`; without `XDG_RUNTIME_DIR`
    /// (cron, some containers), `/tmp/tallyfy-vault-UID/agent.sock`.
    package static func defaultPath(environment: [String: String]) -> String {
        if let runtime = environment["XDG_RUNTIME_DIR"], runtime.hasPrefix("/") {
            return runtime + "/tallyfy-vault/agent.sock"
        }
        return "/tmp/tallyfy-vault-\(geteuid())/agent.sock"
    }

    /// The socket a client should try: the variable, else the default.
    package static func path(environment: [String: String]) -> String {
        if let path = environment[variable], !path.isEmpty { return path }
        return defaultPath(environment: environment)
    }

    /// Where an agent listens: `explicit` (`--socket`), the variable, else
    /// the default; when that is the `/tmp` folder and someone else made it
    /// first, a fresh private folder instead (`RuntimeFolder`), with the
    /// note to print. Clients then find the agent only through the variable,
    /// which `agent --detach` prints.
    package static func listeningPath(explicit: String?, environment: [String: String]) throws -> (path: String, note: String?) {
        if let explicit { return (explicit, nil) }
        if let path = environment[variable], !path.isEmpty { return (path, nil) }
        let (folder, fallback) = try RuntimeFolder.prepare(environment: environment)
        let path = folder + "/agent.sock"
        return (path, fallback.map { "\($0); clients find this agent through \(variable)=\(path) (`agent --detach` prints it)" })
    }

    static func folder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }

    /// The agent's folder, made 0700 if missing; refused unless it is a real
    /// folder (not a link) owned by us that no one else can enter.
    package static func prepareFolder(for path: String) throws {
        let folder = folder(of: path)
        if mkdir(folder, 0o700) != 0 && errno != EEXIST {
            throw VaultError(.io, "could not create the agent's folder \(folder): \(String(cString: strerror(errno)))")
        }
        if let reason = unsafeFolderReason(folder) {
            throw VaultError(.refused, "the agent's folder \(folder) is not safe: \(reason)",
                hint: "remove it, or give another --socket in a folder only you can enter")
        }
    }

    static func unsafeFolderReason(_ folder: String) -> String? {
        var info = stat()
        guard lstat(folder, &info) == 0 else { return "it does not exist" }
        if (info.st_mode & S_IFMT) != S_IFDIR { return "it is not a folder" }
        if info.st_uid != geteuid() { return "it belongs to uid \(info.st_uid)" }
        if info.st_mode & 0o077 != 0 { return "other users can enter it (mode \(String(info.st_mode & 0o777, radix: 8)))" }
        return nil
    }

    // MARK: - Client side

    /// Connects to the agent at `path`, after checking the socket file and
    /// its folder belong to us, and that the process answering runs as us.
    package static func connect(to path: String) throws -> Int32 {
        var info = stat()
        guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFSOCK else {
            throw AgentError.unavailable("no agent socket at \(path)")
        }
        guard info.st_uid == geteuid() else {
            throw AgentError.unavailable("the agent socket \(path) belongs to uid \(info.st_uid), not to you; not trusted")
        }
        if let reason = unsafeFolderReason(folder(of: path)) {
            throw AgentError.unavailable("the agent socket's folder is not trusted: \(reason)")
        }
        let descriptor = try makeSocket()
        var address = try socketAddress(path)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let reason = String(cString: strerror(errno))
            close(descriptor)
            throw AgentError.unavailable("no agent answers at \(path) (\(reason))")
        }
        guard let peer = peerCredentials(descriptor), peer.uid == geteuid() else {
            close(descriptor)
            throw AgentError.unavailable("the process behind \(path) does not run as you; not trusted")
        }
        return descriptor
    }

    // MARK: - Both sides

    static func makeSocket() throws -> Int32 {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw AgentError.unavailable("could not create a socket") }
        setTimeouts(descriptor, seconds: AgentProtocol.ioTimeout)
        return descriptor
    }

    /// Bounds every read and write on `descriptor`, so a silent peer cannot
    /// hold the other end.
    package static func setTimeouts(_ descriptor: Int32, seconds: TimeInterval) {
        var timeout = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - seconds.rounded(.down)) * 1_000_000))
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    static func socketAddress(_ path: String) throws -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else {
            throw AgentError.unavailable("the socket path \(path) is longer than the \(capacity - 1) bytes a Unix socket allows")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    /// The uid and pid of the process at the other end (`SO_PEERCRED`).
    package static func peerCredentials(_ descriptor: Int32) -> (uid: uid_t, pid: pid_t)? {
        var credentials = PeerCredentials()
        var length = socklen_t(MemoryLayout<PeerCredentials>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0,
            length == socklen_t(MemoryLayout<PeerCredentials>.size)
        else { return nil }
        return (credentials.uid, credentials.pid)
    }

    /// Linux's `struct ucred`, which Swift imports only under `_GNU_SOURCE`.
    private struct PeerCredentials {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
    }

    // MARK: - Server side

    /// Binds and listens at `path`. A socket file left by a dead agent is
    /// replaced; one a live agent answers on is refused.
    package static func listen(at path: String) throws -> Int32 {
        try prepareFolder(for: path)
        var info = stat()
        if lstat(path, &info) == 0 {
            guard (info.st_mode & S_IFMT) == S_IFSOCK, info.st_uid == geteuid() else {
                throw VaultError(.usage, "\(path) exists and is not an agent socket of yours; refusing to replace it",
                    hint: "remove it, or give another --socket")
            }
            if let live = try? connect(to: path) {
                close(live)
                throw VaultError(.usage, "an agent is already running on \(path)",
                    hint: "use it, stop it with `tallyfy-vault agent stop`, or give another --socket")
            }
            unlink(path)  // stale: its agent is gone
        }
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw VaultError(.io, "could not create the agent socket") }
        var address = try socketAddress(path)
        // Nothing but us may connect even for a moment: bind under umask 077.
        let previous = umask(0o077)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        umask(previous)
        guard bound == 0, Glibc.listen(descriptor, 256) == 0 else {
            let reason = String(cString: strerror(errno))
            close(descriptor)
            throw VaultError(.io, "could not listen on \(path): \(reason)")
        }
        return descriptor
    }
}

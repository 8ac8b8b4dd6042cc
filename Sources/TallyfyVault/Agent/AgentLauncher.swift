import Foundation
import TallyfyVaultCore

/// Starting the agent: in the background (`--detach`), under systemd, and
/// stopping it on a signal.
package enum AgentLauncher {
    /// Starts a copy of this program as a detached agent (its own session,
    /// standard streams away from the terminal, log in `agent.log` beside the
    /// socket) and hands it the data key through a pipe: never argv, never
    /// the environment, never a file. Returns once the agent answers.
    package static func detach(
        unlocker: VaultUnlocker, socketPath: String, vaultPath: String, idleTimeout: String, maxLifetime: String,
        environment: [String: String]
    ) throws -> pid_t {
        try AgentSocket.prepareFolder(for: socketPath)
        let logPath = (socketPath as NSString).deletingLastPathComponent + "/agent.log"
        var pipeEnds: [Int32] = [-1, -1]
        guard pipe(&pipeEnds) == 0 else { throw VaultError(.io, "could not create a pipe for the agent's key") }
        // Neither end may leak into anything else this process starts.
        for end in pipeEnds { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        defer { close(pipeEnds[1]) }

        // The agent outlives us: it must hold none of our descriptors (a
        // parent waiting for our pipes to close would wait for the agent).
        closeOnExecEverything()

        let arguments = ["agent", "--vault", vaultPath, "--socket", socketPath, "--key-fd", "3",
            "--idle-timeout", idleTimeout, "--max-lifetime", maxLifetime]
        // The agent needs no unlock material: it gets the key on descriptor 3.
        let dropped = ChildEnvironment.removed.union(["TALLYFY_VAULT_KEY_FILE", "TALLYFY_VAULT_PASSPHRASE_FILE"])
        var kept = environment.filter { !dropped.contains($0.key) }
        // glibc overwrites what the agent frees from its start (AgentMemory).
        kept["GLIBC_TUNABLES"] = AgentMemory.tunablesVariable(environment)
        let pid: pid_t
        do {
            pid = try ThisProgram.startDetached("agent", arguments: arguments, environment: kept, logPath: logPath, descriptor3: pipeEnds[0])
        } catch {
            close(pipeEnds[0])
            throw error
        }
        close(pipeEnds[0])
        let sent = unlocker.withDataKeyBytes { write(pipeEnds[1], $0.baseAddress!, $0.count) } ?? -1
        guard sent == 32 else {
            kill(pid, SIGTERM)
            throw VaultError(.io, "could not hand the key to the agent")
        }

        // Ready when it answers; failed when it exits first.
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                throw VaultError(.configuration, "the agent stopped at once; its log is \(logPath)")
            }
            if let answer = try? AgentClient(socketPath: socketPath).ask(.init(op: .status)), answer.ok,
                answer.status?.pid == pid
            {
                return pid
            }
            usleep(10_000)
        }
        kill(pid, SIGTERM)
        throw VaultError(.tryLater, "the agent did not answer within 20 s; its log is \(logPath)")
    }

    private static func closeOnExecEverything() {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        for descriptor in names.compactMap(Int32.init) where descriptor > 2 {
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        }
    }

    /// What `agent --detach` prints, for `eval` (README.md).
    package static func shellVariables(socketPath: String, pid: pid_t) -> String {
        "\(AgentSocket.variable)=\(shellQuoted(socketPath)); export \(AgentSocket.variable); "
            + "\(AgentSocket.pidVariable)=\(pid); export \(AgentSocket.pidVariable);"
    }

    static func shellQuoted(_ text: String) -> String {
        let plain = text.unicodeScalars.allSatisfy {
            CharacterSet.alphanumerics.contains($0) || "/._-+:@%".unicodeScalars.contains($0)
        }
        return plain ? text : "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// SIGTERM and SIGINT make the agent forget its key and stop.
    package static func stopOnSignals(_ server: AgentServer) -> [DispatchSourceSignal] {
        [SIGTERM, SIGINT].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { server.stop() }
            source.resume()
            return source
        }
    }

    /// `sd_notify(READY=1)` for a `Type=notify` unit; nothing without systemd.
    package static func notifySystemd() {
        guard var path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty else { return }
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return }
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let abstract = path.hasPrefix("@")
        if abstract { path.removeFirst() }
        let bytes = Array(path.utf8)
        guard bytes.count + 1 < MemoryLayout.size(ofValue: address.sun_path) else { return }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: (abstract ? [0] : []) + bytes)
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 1 : 0))
        let message = "READY=1"
        _ = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer in
                message.withCString { sendto(descriptor, $0, strlen($0), 0, sockaddrPointer, length) }
            }
        }
    }
}

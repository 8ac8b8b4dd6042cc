import Foundation
import Synchronization
import TallyfyVaultCore

/// The transport: the listening socket's accept threads, reading a request
/// frame (the slow client's own thread), the peer check (`SO_PEERCRED`)
/// and writing the answer.
extension AgentServer {
    /// Each of the `servingThreads` runs this: the kernel hands every
    /// connection to one thread waiting in `accept`, and that thread answers
    /// it. A token the held vault can answer is served right there: no
    /// thread, task or queue between request and answer, each of which costs
    /// a wake-up (under load, milliseconds). Only what may wait (a renewal
    /// talking to Tallyfy, a client slow to send) leaves the thread, so a
    /// slow renewal never holds up other clients.
    func acceptLoop(_ listener: Int32) {
        while !state.withLock({ $0.stopping }) {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else {
                if errno == EINTR || errno == ECONNABORTED { continue }
                usleep(10_000)
                continue
            }
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            serve(connection)
        }
    }

    // MARK: - Serving one connection

    private func serve(_ connection: Int32) {
        AgentSocket.setTimeouts(connection, seconds: AgentProtocol.ioTimeout)
        guard let peer = AgentSocket.peerCredentials(connection), peer.uid == geteuid() else {
            let who = AgentSocket.peerCredentials(connection).map { "uid \($0.uid) (pid \($0.pid))" } ?? "an unknown peer"
            log("refused a connection from \(who): the agent serves uid \(geteuid()) only")
            close(connection)
            return
        }
        // Clients send their whole request as soon as they are connected.
        // One that has not within a moment gets a thread of its own to wait
        // on, with one deadline for the whole frame (the protocol's 5 s, not
        // per byte): a client trickling its request holds up no one else.
        let deadline = Date().addingTimeInterval(AgentProtocol.ioTimeout)
        var reader = AgentProtocol.FrameReader(maxLength: AgentProtocol.maxRequestLength)
        do {
            if let body = try reader.read(from: connection, until: Date().addingTimeInterval(0.1)) {
                return respond(to: body, on: connection, from: peer.pid)
            }
        } catch {
            return drop(connection, from: peer.pid, error)
        }
        guard state.withLock({ state -> Bool in
            guard state.slowClients < Self.slowClientLimit else { return false }
            state.slowClients += 1
            return true
        }) else {
            return drop(connection, from: peer.pid, AgentError.connection("\(Self.slowClientLimit) other clients are still sending"))
        }
        let started = reader
        let thread = Thread { [self] in
            defer { state.withLock { $0.slowClients -= 1 } }
            var reader = started
            do {
                guard let body = try reader.read(from: connection, until: deadline) else {
                    throw AgentError.connection("no whole request within \(Int(AgentProtocol.ioTimeout)) s")
                }
                respond(to: body, on: connection, from: peer.pid)
            } catch {
                drop(connection, from: peer.pid, error)
            }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    private func drop(_ connection: Int32, from pid: pid_t, _ error: Error) {
        let reason: String
        switch error as? AgentError {
        case .connection(let text)?, .unavailable(let text)?: reason = text
        case nil: reason = "\(error)"
        }
        log("dropped a connection from pid \(pid): \(reason)")
        close(connection)
    }

    func reply(_ answer: AgentProtocol.Answer, on connection: Int32, to pid: pid_t) {
        do {
            try AgentProtocol.send(answer, to: connection)
        } catch {
            log("pid \(pid) hung up before its answer; still serving")
        }
        close(connection)
    }
}

import Foundation
import Synchronization
import TallyfyVaultCore

extension FuzzEntry {
    /// A two-member location: a refusal from one sends the request to the other.
    static let etcdLocation = try! EtcdLocation(parsing: "etcd://127.0.0.1:2379,127.0.0.1:2380/fuzz", environment: [:])

    /// What the client makes of the etcd v3 JSON gateway's answers: the input
    /// is the operation (its first byte: read, read of a copy at a known
    /// revision, create, write, lock and release, or the watch stream) and
    /// then the answers the members give, in order, separated by the byte
    /// 0x1e; each answer's first byte is its HTTP status (200 for most values,
    /// else 503, 400, 401 or 500), the rest its body. When the answers run
    /// out, the members refuse connections. No network is used: the gateway's
    /// transport is these answers, and it never waits between rounds.
    ///
    /// For the watch, the rest of the input is the stream, cut into chunks at
    /// each 0x1e, read line by line as `VaultWatch` reads it.
    ///
    /// Every failure must be a `VaultError` (the commands' exit statuses come
    /// from it) whose message and hint are one line each; a vault read must
    /// be within the 64 MiB a vault on etcd may hold; a watch line must give
    /// a one-line reason of at most 200 characters. Anything else traps.
    ///
    /// Async, as the client is: the fuzz harness, whose thread is libFuzzer's
    /// own, waits for it (`blocking` in tallyfy-vault-fuzz).
    @discardableResult
    package static func etcdAnswers(_ input: Data) async -> Outcome {
        let bytes = [UInt8](input)
        guard let first = bytes.first else { return Outcome(expect: "refused", stage: "input", message: "empty") }
        let rest = Array(bytes.dropFirst())
        let operation = Int(first % 6)
        if operation == 5 { return watchStream(rest) }

        let statuses: [UInt] = [200, 200, 200, 200, 503, 400, 401, 500]
        let answers = rest.split(separator: 0x1E, omittingEmptySubsequences: false).map { part -> (UInt, Data) in
            (statuses[Int((part.first ?? 0) % 8)], Data(part.dropFirst()))
        }
        let queue = Mutex((answers: answers, next: 0))
        let transport: EtcdTransport = { _, _, _ in
            try queue.withLock { queue in
                guard queue.next < queue.answers.count else { throw MembersRefuse() }
                defer { queue.next += 1 }
                return queue.answers[queue.next]
            }
        }
        let gateway: EtcdGateway
        do {
            gateway = try EtcdGateway(location: etcdLocation, transport: transport, pause: { _ in })
        } catch {
            preconditionFailure("the fuzz target's gateway could not be made: \(error)")
        }
        let vault = EtcdVault(location: etcdLocation, gateway: gateway)
        let names = ["read", "read-known", "create", "write", "lock"]
        let payload = Data((0..<100).map { UInt8($0) })
        do {
            switch operation {
            case 0, 1:
                switch try await vault.read(ifChangedSince: operation == 1 ? 5 : nil) {
                case .current(let snapshot):
                    precondition(snapshot.bytes.count <= EtcdVault.maxVaultBytes, "a vault of \(snapshot.bytes.count) bytes was read")
                case .missing, .unchanged:
                    break
                }
            case 2:
                _ = try await vault.create(payload)
            case 3:
                _ = try await vault.write(payload, replacing: RemoteSnapshot(bytes: payload, revision: 5))
            default:
                let lock = try await vault.lock(timeout: .zero)
                await lock.release()
            }
            return Outcome(expect: "success", stage: names[operation], message: "")
        } catch let error as VaultError {
            precondition(!error.message.contains(where: \.isNewline), "a message of more than one line")
            precondition(!(error.hint ?? "").contains(where: \.isNewline), "a hint of more than one line")
            return Outcome(expect: "\(error.kind)", stage: names[operation], message: error.message)
        } catch {
            preconditionFailure("an error that is not a VaultError: \(error)")
        }
    }

    /// Thrown by the fuzz transport once its answers are spent.
    struct MembersRefuse: Error, CustomStringConvertible {
        var description: String { "connection refused" }
    }

    private static func watchStream(_ bytes: [UInt8]) -> Outcome {
        var lines = WatchLines()
        var events = 0
        func check(_ line: Data) -> Bool {
            let event = WatchEvent(line: line)
            if let reason = event.ended {
                precondition(!reason.contains(where: \.isNewline) && reason.count <= 200, "a watch's end reason of more than one short line")
                return false
            }
            if event.created || event.changedAt != nil { events += 1 }
            return true
        }
        do {
            for chunk in bytes.split(separator: 0x1E, omittingEmptySubsequences: false) {
                for line in try lines.append(chunk) {
                    precondition(!line.contains(0x0A), "a watch line holds a newline")
                    guard check(line) else { return Outcome(expect: "ended", stage: "watch", message: "") }
                }
            }
        } catch let ended as WatchEnded {
            return Outcome(expect: "ended", stage: "watch", message: ended.reason)
        } catch {
            preconditionFailure("the watch reader threw \(error)")
        }
        guard check(lines.rest) else { return Outcome(expect: "ended", stage: "watch", message: "") }
        return Outcome(expect: "success", stage: "watch", message: "\(events) events")
    }
}

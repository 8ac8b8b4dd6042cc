import Foundation
import Synchronization
import Testing

@testable import TallyfyVault
@testable import TallyfyVaultCore

#if canImport(Glibc)
    import Glibc
#endif

/// Issue 18: a request to etcd suspends its task while it waits; it holds
/// no thread. Members that accept connections and never answer (a hung
/// host) keep each read for the gateway's 3 s deadline. A blocking client
/// could have only as many reads in flight as Swift's shared pool has
/// threads (one per core); a suspending one has them all in flight at once.
struct EtcdSuspendsTests {
    @Test func readsWaitingOnHungMembersAreAllInFlightAtOnce() async throws {
        // More reads than the pool has threads, at most 8 per member
        // (AsyncHTTPClient's connections per host).
        let count = ProcessInfo.processInfo.activeProcessorCount * 2 + 2
        let tally = OpenConnections()
        let members = try (0..<((count + 7) / 8)).map { _ in try HungMember(tally: tally) }
        defer { for member in members { member.close() } }
        let vaults = try members.map { member in
            try EtcdVault(location: try EtcdLocation(parsing: "etcd://127.0.0.1:\(member.port)/suspends", environment: [:]))
        }
        let failures = await withTaskGroup(of: VaultError.Kind?.self) { group in
            for index in 0..<count {
                group.addTask {
                    do {
                        _ = try await vaults[index % vaults.count].read()
                        return nil
                    } catch {
                        return (error as? VaultError)?.kind
                    }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        // Every read gave up on its hung member (69), and all of them were
        // waiting on it at the same time.
        #expect(failures.allSatisfy { $0 == .unavailable }, "\(failures)")
        #expect(tally.most == count, "at most \(tally.most) of \(count) reads were in flight at once")
    }
}

/// How many connections the hung members hold open now, and the most at once.
private final class OpenConnections: Sendable {
    private let counts = Mutex((open: 0, most: 0))

    func opened() {
        counts.withLock {
            $0.open += 1
            $0.most = max($0.most, $0.open)
        }
    }

    func closed() { counts.withLock { $0.open -= 1 } }

    var most: Int { counts.withLock { $0.most } }
}

/// A member that accepts connections on a loopback port, reads what it is
/// sent and never answers, until the client hangs up.
private final class HungMember: Sendable {
    let port: Int
    private let listener: Int32

    init(tally: OpenConnections) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(listener, pointer, length) == 0 && listen(listener, 64) == 0 && getsockname(listener, pointer, &length) == 0
            }
        }
        guard listener >= 0, bound else { throw VaultError(.io, "could not listen on a loopback port") }
        self.listener = listener
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread.detachNewThread {
            while true {
                let connection = accept(listener, nil, nil)
                guard connection >= 0 else { return }  // closed: the test is over
                tally.opened()
                Thread.detachNewThread {
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    while read(connection, &buffer, buffer.count) > 0 {}
                    tally.closed()
                    Glibc.close(connection)
                }
            }
        }
    }

    func close() {
        shutdown(listener, Int32(SHUT_RDWR))
        Glibc.close(listener)
    }
}

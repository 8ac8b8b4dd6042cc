import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A throwaway etcd cluster on loopback, started through `tools/etcd-cluster`
/// (which installs etcd when it is missing and may).
final class EtcdCluster: @unchecked Sendable {
    let folder: String
    let endpoints: String
    let tls: Bool

    static let tool = LibraryExampleTests.packageRoot.appendingPathComponent("tools/etcd-cluster").path

    /// `nil` (and a message) when etcd is not installed and cannot be.
    /// With `owner`, the cluster is stopped when that process ends (for a
    /// cluster shared by the whole test process, which no `deinit` stops).
    /// Throws when the cluster can't start, etcd missing included: a test of
    /// the fleet that passes without a fleet proves nothing (tools/test
    /// installs etcd-server).
    static func start(members: Int = 3, tls: Bool = false, owner: pid_t? = nil) throws -> EtcdCluster {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("tv-etcd-\(UUID().uuidString)").path
        var arguments = ["start", "--dir", folder, "--members", String(members)]
        if tls { arguments.append("--tls") }
        if let owner { arguments += ["--owner", String(owner)] }
        let result = try tool(arguments)
        guard result.status == 0 else {
            throw EtcdClusterError(message: "tools/etcd-cluster start (tools/test installs etcd-server): \(result.brief)")
        }
        return EtcdCluster(folder: folder, endpoints: result.stdout.trimmingCharacters(in: .whitespacesAndNewlines), tls: tls)
    }

    private init(folder: String, endpoints: String, tls: Bool) {
        self.folder = folder
        self.endpoints = endpoints
        self.tls = tls
    }

    static func tool(_ arguments: [String]) throws -> RunResult {
        try spawnAndWait([tool] + arguments)
    }

    static func etcdctl(_ arguments: [String]) throws -> RunResult {
        try spawnAndWait(["/usr/bin/etcdctl"] + arguments)
    }

    /// Runs a command through `bash -c` with its output in files and waits
    /// with `waitpid`. Not Foundation's `Process`: a child that leaves daemons
    /// behind (the etcd members) was seen never to be reported as exited.
    static func spawnAndWait(_ command: [String]) throws -> RunResult {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("tv-etcd-run-\(UUID().uuidString)").path
        defer { for suffix in [".out", ".err", ".rc"] { unlink(base + suffix) } }
        func quoted(_ word: String) -> String { "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        // First close every descriptor beyond 2 that bash inherited: posix_spawn
        // passes on the test runner's open pipes (other tests' children's
        // output), and an etcd member keeping one open would keep that test
        // waiting for an end of file forever.
        let closeInherited = "for fd in /proc/self/fd/*; do fd=${fd##*/}; [ \"$fd\" -gt 2 ] && exec {fd}>&-; done; "
        let script = closeInherited + "ETCDCTL_API=3 " + command.map(quoted).joined(separator: " ")
            + " </dev/null >\(quoted(base + ".out")) 2>\(quoted(base + ".err")); echo $? >\(quoted(base + ".rc"))"
        let argv = ["/bin/bash", "-c", script]
        let environment = ["PATH=" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")]
        var cArguments = argv.map { strdup($0) } + [nil]
        var cEnvironment = environment.map { strdup($0) } + [nil]
        defer { (cArguments + cEnvironment).forEach { free($0) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, "/bin/bash", nil, nil, &cArguments, &cEnvironment) == 0 else {
            throw EtcdClusterError(message: "could not start bash")
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // Whoever reaped it, the exit status is in the file.
        // Sealed values are binary: decoded leniently.
        func text(_ suffix: String) -> String {
            String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: base + suffix))) ?? Data(), as: UTF8.self)
        }
        let code = Int32(text(".rc").trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        return RunResult(status: code, stdout: text(".out"), stderr: text(".err"))
    }

    func location(_ prefix: String = "/tallyfy/\(UUID().uuidString.prefix(8))") -> String {
        "\(tls ? "etcds" : "etcd")://\(endpoints)\(prefix)"
    }

    var members: Int { endpoints.split(separator: ",").count }

    func kill(member: Int) throws { _ = try Self.tool(["kill", "--dir", folder, String(member)]) }
    func revive(member: Int) throws { _ = try Self.tool(["revive", "--dir", folder, String(member)]) }

    /// Stops (SIGSTOP) or continues member N: a hung host, whose connections
    /// stay open and silent.
    func signal(member: Int, _ signal: Int32) throws {
        let text = try String(contentsOfFile: "\(folder)/m\(member).pid", encoding: .utf8)
        let pid = try #require(pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(Glibc.kill(pid, signal) == 0)
    }

    /// Waits (bounded) until etcdctl reports every member healthy.
    func waitHealthy(seconds: Double = 30) -> Bool {
        ProcView.waitUntil(seconds: seconds) {
            (try? Self.etcdctl(["--endpoints", endpoints, "endpoint", "health", "--command-timeout=1s"]).status) == 0
        }
    }

    deinit { _ = try? Self.tool(["stop", "--dir", folder]) }
}

struct EtcdClusterError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}


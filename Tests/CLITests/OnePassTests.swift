import Foundation
import Testing

/// One hand-out path: every command reads the vault once, decides once in
/// `TokenBroker`, and every way of asking for a token (`exec`, `token`, its
/// helper format, `export`) gives the same status for the same situation.
@Suite struct OnePassTests {
    let secret = "cs-\(UUID().uuidString)"

    /// The arguments that ask for the application token in each consumer,
    /// each with `--min-ttl 8d`, which a 7-day token never satisfies.
    private static let consumers: [[String]] = [
        ["exec", "--min-ttl", "8d", "--", "true"],
        ["token", "--min-ttl", "8d"],
        ["token", "--format", "helper", "--min-ttl", "8d"],
        ["export", "--min-ttl", "8d"],
    ]

    /// Tallyfy refusing the client secret is never ridden out: someone must act (77), in every consumer.
    @Test func aRefusedSecretIsRefusedByEveryConsumer() async throws {
        let world = try await LoggedIn.start(secrets: [secret])
        defer { world.emulator.stop() }
        try await world.emulator.setSecrets(client: "client-test", secrets: [])
        for arguments in Self.consumers {
            let result = try world.sandbox.refused(arguments, status: 77)
            #expect(result.stderr.contains("Tallyfy refused the client credentials"), "\(arguments): \(result.brief)")
        }
    }

    /// During an outage: 0 with one warning line, and 69 with `--strict-ttl`, in every consumer.
    @Test func anOutageIsRiddenOutAlikeAndStrictTTLFailsAlike() async throws {
        let world = try await LoggedIn.start(secrets: [secret])
        defer { world.emulator.stop() }
        try await world.emulator.inject(Emulator.Fault(endpoint: "token", kind: "status", status: 503))
        for arguments in Self.consumers {
            let result = try world.sandbox.run(arguments)
            #expect(result.status == 0, "\(arguments): \(result.brief)")
            let lines = result.stderr.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].hasPrefix("tallyfy-vault: warning: could not renew the application token"),
                "\(arguments): \(result.brief)")
            var strict = arguments
            strict.insert("--strict-ttl", at: arguments[0] == "exec" ? 1 : arguments.count)
            try world.sandbox.refused(strict, status: 69)
        }
    }

    /// The helper's one deadline covers a hanging Tallyfy: it answers within
    /// 5 s with the sealed token, and with `--strict-ttl` fails (69) as fast.
    @Test func theHelpersDeadlineFollowsTheSameRule() async throws {
        let world = try await LoggedIn.start(secrets: [secret])
        defer { world.emulator.stop() }
        try await world.emulator.inject(Emulator.Fault(endpoint: "token", kind: "delay", delayMs: 60_000))
        let started = Date()
        let strict = try world.sandbox.refused(["token", "--format", "helper", "--strict-ttl", "--min-ttl", "8d"], status: 69)
        #expect(Date().timeIntervalSince(started) < 9, "\(strict.brief)")
        #expect(strict.stderr.contains("Tallyfy did not answer within "), "\(strict.brief)")
    }

    // MARK: - Reads, counted with strace

    /// How many times one run opens each of `paths` (`openat` calls, the
    /// launcher and the CLI it hands over to counted together).
    private func opens(_ sandbox: Sandbox, _ arguments: [String], of paths: [String]) throws -> [Int] {
        let log = sandbox.path("strace-\(UUID().uuidString).log")
        let result = try runProcess(URL(fileURLWithPath: "/usr/bin/strace"),
            ["-f", "-qq", "-e", "trace=openat,open", "-o", log, BuildProducts.vault.path] + arguments,
            environment: sandbox.environment)
        #expect(result.status == 0, "\(arguments): \(result.brief)")
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        return paths.map { path in lines.filter { $0.contains("\"\(path)\"") }.count }
    }

    @Test func aCommandReadsTheVaultOnce() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: "/usr/bin/strace"), "tools/test installs strace")
        let world = try await LoggedIn.start(secrets: [secret])
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let files = [sandbox.vaultPath, sandbox.keyPath]
        // A fresh exec (the launcher alone) and the helper (launcher, then CLI): one read.
        #expect(try opens(sandbox, ["exec", "--", "true"], of: files) == [1, 1])
        #expect(try opens(sandbox, ["token", "--format", "helper"], of: files) == [1, 1])
        #expect(try opens(sandbox, ["token"], of: files) == [1, 1])
        #expect(try opens(sandbox, ["export"], of: files) == [1, 1])
        // check and status read the vault once (status needs no key).
        #expect(try opens(sandbox, ["check"], of: files) == [1, 1])
        #expect(try opens(sandbox, ["status"], of: files) == [1, 0])
        // Refreshing: read once, then once more under the lock to renew. The
        // launcher hands over what it saw, so the CLI does not read first
        // (the key file is read by each of the two processes).
        #expect(try opens(sandbox, ["token", "--min-ttl", "8d"], of: files) == [2, 1])
        #expect(try opens(sandbox, ["exec", "--min-ttl", "8d", "--", "true"], of: files) == [2, 2])
    }
}

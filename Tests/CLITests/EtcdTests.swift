import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The vault on a real 3-member etcd cluster on loopback: the commands, many
/// machines at once, one refresh for the fleet, the cluster down, migrate.
/// Serialized: each test runs its own cluster, and two cores are enough for one.
@Suite(.serialized) struct EtcdTests {
    let secret = "cs-\(UUID().uuidString)"
    let client = "client-test"

    /// A "machine": its own home (so its own cache) on the shared location and key.
    private func machine(location: String, key: String) throws -> Sandbox {
        let sandbox = try Sandbox()
        sandbox.environment["TALLYFY_VAULT_FILE"] = location
        sandbox.environment["TALLYFY_VAULT_KEY_FILE"] = key
        return sandbox
    }

    /// A machine with a key file of its own, logged in to `emulator` through
    /// a new vault at `location`.
    private func loggedIn(on location: String, _ emulator: Emulator) throws -> Sandbox {
        let sandbox = try Self.sandbox(on: location)
        try sandbox.ok(["init"])
        try sandbox.storeCredentials(for: emulator, secret: secret)
        try sandbox.ok(["login"])
        return sandbox
    }

    /// Machines a and b on one vault in `cluster`, logged in through a, and an
    /// agent running on b (the caller stops it).
    private func machinesWithAnAgentOnB(_ cluster: EtcdCluster, _ emulator: Emulator) throws
        -> (a: Sandbox, b: Sandbox, agent: BackgroundCommand, location: String)
    {
        let location = cluster.location()
        // The key lives in a's folder, which lives as long as the test holds a.
        let a = try loggedIn(on: location, emulator)
        let b = try machine(location: location, key: a.keyPath)
        let runtime = b.root.appendingPathComponent("run")
        try FileManager.default.createDirectory(at: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        b.environment["XDG_RUNTIME_DIR"] = runtime.path
        return (a, b, try b.launch(["agent"]), location)
    }

    /// The members an agent's log says its watch went through, in order.
    private static func watchedMembers(_ agent: BackgroundCommand, _ location: String) -> [String] {
        // Whole lines only: a line read half-written named a member cut short
        // ("127.0.0.1:23"), which is no member (a clone-check).
        let log = agent.stderrSoFar
        let whole = log[..<(log.lastIndex(of: "\n") ?? log.startIndex)]
        return whole.split(separator: "\n").compactMap { line in
            guard line.contains("watching \(location)"), let through = line.range(of: "(through ") else { return nil }
            return String(line[through.upperBound...].dropLast())
        }
    }

    private func cacheFiles(_ sandbox: Sandbox) -> [URL] {
        filesBelow(sandbox.root.appendingPathComponent(".cache/tallyfy-vault/etcd"))
    }

    /// A sandbox with a key file whose vault location is `location`.
    static func sandbox(on location: String) throws -> Sandbox {
        let sandbox = try Sandbox()
        try sandbox.ok(["keygen", sandbox.keyPath])
        sandbox.environment["TALLYFY_VAULT_KEY_FILE"] = sandbox.keyPath
        sandbox.environment["TALLYFY_VAULT_FILE"] = location
        return sandbox
    }

    @Test func aLocationThatLooksLikeAURLIsNeverAFile() throws {
        let sandbox = try Sandbox()
        try sandbox.ok(["keygen", sandbox.keyPath])
        sandbox.environment["TALLYFY_VAULT_KEY_FILE"] = sandbox.keyPath
        let here = FileManager.default.currentDirectoryPath
        for location in ["http://127.0.0.1:2379/x", "etc://127.0.0.1:2379/x", "s3://bucket/vault"] {
            let result = try sandbox.refused(["--vault", location, "init"], status: 64)
            #expect(result.stderr.contains("not a vault location"), "\(result.stderr)")
        }
        // Plain HTTP to etcd is for this machine only; a malformed location is refused.
        let remote = try sandbox.refused(["--vault", "etcd://10.1.2.3:2379/tallyfy/prod", "init"], status: 64)
        #expect(remote.stderr.contains("etcds://"), "\(remote.stderr)")
        try sandbox.refused(["--vault", "etcd://127.0.0.1:2379", "init"], status: 64)
        try sandbox.refused(["--vault", "etcd://127.0.0.1/tallyfy", "init"], status: 64)
        try sandbox.refused(["exec", "--", "true"], status: 64, env: ["TALLYFY_VAULT_FILE": "https://example.com/v"])
        for name in ["http:", "etc:", "s3:", "etcd:", "https:"] {
            #expect(!FileManager.default.fileExists(atPath: here + "/" + name), "\(name) was created as a folder")
            #expect(!FileManager.default.fileExists(atPath: sandbox.root.path + "/" + name))
        }
    }

    @Test func everyCommandWorksOnAnEtcdVault() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }  // stopped at the end, not after its last use
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let location = cluster.location()
        let sandbox = try Self.sandbox(on: location)
        let created = try sandbox.ok(["init"])
        #expect(created.stderr.contains(location))
        try sandbox.refused(["init"], status: 64)
        try sandbox.storeCredentials(for: emulator, secret: secret)
        let shown = try sandbox.ok(["credentials", "show"]).stdout
        #expect(shown.contains("org-test") && !shown.contains(secret))
        try sandbox.ok(["login"])
        let token = try sandbox.ok(["token"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!token.isEmpty)
        let child = try sandbox.ok(["exec", "--", "printenv", "TALLYFY_TOKEN"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(child == token)
        try sandbox.ok(["users", "create", "--email", "ada@example.com", "--first-name", "Ada", "--last-name", "Lovelace"])
        try sandbox.ok(["users", "token", "ada@example.com"])
        let userToken = try sandbox.ok(["token", "--user", "ada@example.com", "--no-refresh"]).stdout
        #expect(!userToken.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        #expect(try sandbox.ok(["users", "list"]).stdout.contains("ada@example.com"))
        try sandbox.ok(["status"])
        try sandbox.ok(["keys", "list"])
        #expect(try await emulator.counts()["token"] == 1, "the login's token was not reused")

        // Nothing in etcd is readable: the secret and the tokens appear nowhere.
        let dump = try EtcdCluster.etcdctl(["--endpoints", cluster.endpoints, "get", "--prefix", "/tallyfy/"])
        #expect(dump.status == 0 && dump.stdout.contains("/manifest"))
        #expect(!dump.stdout.contains(secret) && !dump.stdout.contains(token))
        // The cache is private, and sealed too.
        let cache = cacheFiles(sandbox)
        #expect(cache.count == 1)
        for file in cache {
            let mode = (try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? Int) ?? 0
            #expect(mode == 0o600)
            let bytes = try Data(contentsOf: file)
            #expect(bytes.range(of: Data(secret.utf8)) == nil && bytes.range(of: Data(token.utf8)) == nil)
        }
        // No file was created anywhere for the location.
        #expect(!FileManager.default.fileExists(atPath: FileManager.default.currentDirectoryPath + "/etcd:"))
    }

    @Test func threeMachinesWritingAtOnceLoseNoUpdate() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }  // stopped at the end, not after its last use
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let location = cluster.location()
        let first = try Sandbox()
        try first.ok(["keygen", first.keyPath])
        let machines = try (0..<3).map { _ in try machine(location: location, key: first.keyPath) }
        try machines[0].ok(["init"])

        var writers: [BackgroundCommand] = []
        for (index, machine) in machines.enumerated() {
            for profile in 0..<5 {
                writers.append(try machine.launch(["--profile", "m\(index)-p\(profile)", "credentials", "set", "--org", "org-test",
                    "--client-id", client, "--secret-stdin", "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL],
                    stdin: secret))
            }
        }
        let results = writers.map { $0.wait() }
        #expect(results.allSatisfy { $0.status == 0 }, "\(results.filter { $0.status != 0 }.map(\.brief))")
        // Every write is there, seen from every machine.
        for machine in machines {
            for index in 0..<3 {
                for profile in 0..<5 {
                    try machine.ok(["--profile", "m\(index)-p\(profile)", "credentials", "show"])
                }
            }
        }
    }

    @Test func threeMachinesManyExecsOneTokenRequest() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }  // stopped at the end, not after its last use
        let emulator = try await Emulator.start(clients: [(client, secret)], appTokenTTL: 1)
        defer { _ = emulator.stop() }
        let location = cluster.location()
        let keyHolder = try Sandbox()
        try keyHolder.ok(["keygen", keyHolder.keyPath])
        let machines = try (0..<3).map { _ in try machine(location: location, key: keyHolder.keyPath) }
        try machines[0].ok(["init"])
        try machines[0].storeCredentials(for: emulator, secret: secret)
        try machines[0].ok(["login"])
        for machine in machines {
            machine.environment["TALLYFY_VAULT_TEST_NOW"] = "+1h"  // the sealed token has expired
            try machine.ok(["status"])  // each machine has the vault (and the expired token) in its cache
        }
        try await emulator.setLifetimes(app: 604_800)
        try await emulator.reset()

        var execs: [BackgroundCommand] = []
        for _ in 0..<8 {
            for machine in machines {
                execs.append(try machine.launch(["exec", "--", "printenv", "TALLYFY_TOKEN"]))
            }
        }
        let results = execs.map { $0.wait() }
        #expect(results.allSatisfy { $0.status == 0 }, "\(results.filter { $0.status != 0 }.map(\.brief))")
        #expect(try await emulator.counts()["token"] == 1, "the fleet made more than one token request")
        let handedOut = Set(results.map { $0.stdout.trimmingCharacters(in: .whitespacesAndNewlines) })
        #expect(handedOut.count == 1 && !handedOut.contains(""), "\(handedOut.count) different tokens")
    }

    @Test func withTheClusterDownExecServesTheCacheAndWritesFailCleanly() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }  // stopped at the end, not after its last use
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let location = cluster.location()
        let sandbox = try loggedIn(on: location, emulator)
        let token = try sandbox.ok(["token"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let cache = try #require(cacheFiles(sandbox).first)
        let cached = try Data(contentsOf: cache)

        for member in 1...cluster.members { try cluster.kill(member: member) }
        let child = try sandbox.ok(["exec", "--", "printenv", "TALLYFY_TOKEN"])
        #expect(child.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == token)
        #expect(try sandbox.ok(["token"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == token)
        // A read that asks the cluster says it used the cache.
        let listed = try sandbox.ok(["credentials", "show"])
        #expect(listed.stderr.contains("warning") && listed.stderr.contains("unreachable"), "\(listed.stderr)")
        // Writes fail with 69 and a hint; nothing changes.
        let refused = try sandbox.refused(["--profile", "other", "credentials", "set", "--org", "org-test", "--client-id", client,
            "--secret-stdin", "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], status: 69, stdin: secret)
        #expect(refused.stderr.contains("unreachable") && refused.stderr.contains("hint"), "\(refused.stderr)")
        try sandbox.refused(["login"], status: 69)
        #expect(try Data(contentsOf: cache) == cached)

        // Back up: everything resumes.
        for member in 1...cluster.members { try cluster.revive(member: member) }
        #expect(cluster.waitHealthy())
        try sandbox.ok(["--profile", "other", "credentials", "set", "--org", "org-test", "--client-id", client,
            "--secret-stdin", "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: secret)
        try sandbox.ok(["--profile", "other", "credentials", "show"])
        #expect(try sandbox.ok(["token", "--no-refresh"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == token)
    }

    @Test func migrateMovesAVaultBothWaysSealed() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }  // stopped at the end, not after its last use
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        try sandbox.storeCredentials(for: emulator, secret: secret)
        try sandbox.ok(["login"])
        let token = try sandbox.ok(["token"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let original = try sandbox.vaultBytes()

        let location = cluster.location()
        try sandbox.ok(["migrate", "--to", location])
        #expect(try sandbox.vaultBytes() == original, "the source changed")
        try sandbox.refused(["migrate", "--to", location], status: 64)  // never overwrites
        let fromEtcd = try sandbox.ok(["--vault", location, "token", "--no-refresh"]).stdout
        #expect(fromEtcd.trimmingCharacters(in: .whitespacesAndNewlines) == token)

        let back = sandbox.path("back/vault")
        try sandbox.ok(["--vault", location, "migrate", "--to", back])
        #expect(try Data(contentsOf: URL(fileURLWithPath: back)) == original)
        let mode = (try FileManager.default.attributesOfItem(atPath: back)[.posixPermissions] as? Int) ?? 0
        #expect(mode == 0o600)
        #expect(try sandbox.ok(["--vault", back, "token", "--no-refresh"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == token)
        try sandbox.refused(["migrate", "--to", sandbox.vaultPath], status: 64)

        // Issue 24 F9: with every member down, migrate copies nothing from
        // this machine's cache (which the reads above filled): 69.
        for member in 1...cluster.members { try cluster.kill(member: member) }
        let stale = sandbox.path("stale/vault")
        let down = try sandbox.refused(["--vault", location, "migrate", "--to", stale], status: 69)
        #expect(down.stderr.contains("unreachable"), "\(down.stderr)")
        #expect(!FileManager.default.fileExists(atPath: stale), "migrate wrote the cached copy")
        for member in 1...cluster.members { try cluster.revive(member: member) }
        #expect(cluster.waitHealthy())
    }

    @Test func aTenThousandUserVaultFitsEtcdsRequestLimit() async throws {
        let cluster = try EtcdCluster.start(members: 1)
        defer { withExtendedLifetime(cluster) {} }  // stopped at the end, not after its last use
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        try sandbox.storeCredentials(for: emulator, secret: secret)
        let fixture = BuildProducts.directory.appendingPathComponent("tallyfy-vault-fixture")
        let filled = try runProcess(fixture, ["add-users", "--vault", sandbox.vaultPath, "--key-file", sandbox.keyPath, "--count", "10000"],
            environment: sandbox.environment)
        #expect(filled.status == 0, "\(filled.brief)")
        #expect(try sandbox.vaultBytes().count > 1_572_864, "the vault is smaller than etcd's request limit")

        let location = cluster.location()
        try sandbox.ok(["migrate", "--to", location])
        sandbox.environment["TALLYFY_VAULT_FILE"] = location
        // A change re-seals the whole vault: it goes in chunks, then one transaction.
        try sandbox.ok(["--profile", "other", "credentials", "set", "--org", "org-test", "--client-id", client,
            "--secret-stdin", "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: secret)
        let other = try machine(location: location, key: sandbox.keyPath)
        #expect(try other.ok(["users", "list"]).stdout.contains("user9999@example.com"))
        try other.ok(["--profile", "other", "credentials", "show"])
        let keys = try EtcdCluster.etcdctl(["--endpoints", cluster.endpoints, "get", "--prefix", "--keys-only", "/tallyfy/"])
        let chunks = keys.stdout.split(separator: "\n").filter { $0.contains("/chunks/") }
        #expect(chunks.count >= 3, "\(chunks.count) chunk keys")
        #expect(Set(chunks.map { $0.split(separator: "/").dropLast().joined(separator: "/") }).count == 1, "old generations were left")
    }

    @Test func tlsWithClientCertificatesAndAWrongCertificateRefused() async throws {
        let cluster = try EtcdCluster.start(members: 1, tls: true)
        defer { withExtendedLifetime(cluster) {} }  // stopped at the end, not after its last use
        let tls = cluster.folder + "/tls"
        let sandbox = try Self.sandbox(on: cluster.location())
        sandbox.environment["TALLYFY_VAULT_ETCD_CACERT"] = tls + "/ca.pem"
        sandbox.environment["TALLYFY_VAULT_ETCD_CERT"] = tls + "/client.pem"
        sandbox.environment["TALLYFY_VAULT_ETCD_KEY"] = tls + "/client.key"
        try sandbox.ok(["init"])
        try sandbox.ok(["keys", "list"])

        // A client certificate from another CA: refused (77), with a hint.
        let other = sandbox.path("other")
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        let openssl = URL(fileURLWithPath: "/usr/bin/openssl")
        _ = try runProcess(openssl, ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=intruder",
            "-keyout", other + "/client.key", "-out", other + "/client.pem"], environment: [:])
        let refused = try sandbox.refused(["keys", "list"], status: 77, env: [
            "TALLYFY_VAULT_ETCD_CERT": other + "/client.pem", "TALLYFY_VAULT_ETCD_KEY": other + "/client.key",
            "XDG_CACHE_HOME": sandbox.path("empty-cache"),
        ])
        #expect(refused.stderr.contains("TLS"), "\(refused.stderr)")
        // Without the CA the server is not trusted.
        try sandbox.refused(["keys", "list"], status: 77, env: [
            "TALLYFY_VAULT_ETCD_CACERT": "", "XDG_CACHE_HOME": sandbox.path("empty-cache"),
        ])
    }

    @Test func anEtcdUserLogsInOncePerCommandAndIsRefusedClearlyWithoutAccess() async throws {
        let cluster = try EtcdCluster.start(members: 1)
        defer { withExtendedLifetime(cluster) {} }
        let sandbox = try Sandbox()
        let password = "pw-\(UUID().uuidString)"
        func admin(_ arguments: [String]) throws {
            let result = try EtcdCluster.etcdctl(["--endpoints", cluster.endpoints] + arguments)
            #expect(result.status == 0, "etcdctl \(arguments.prefix(2)): \(result.brief)")
        }
        // etcdctl 3.4 takes passwords only in argv: acceptable for this throwaway test cluster.
        try admin(["user", "add", "root:\(password)"])
        try admin(["user", "add", "vault:\(password)"])
        try admin(["role", "add", "vault-role"])
        try admin(["role", "grant-permission", "vault-role", "--prefix=true", "readwrite", "/tallyfy/allowed/"])
        try admin(["user", "grant-role", "vault", "vault-role"])
        try admin(["auth", "enable"])

        try sandbox.ok(["keygen", sandbox.keyPath])
        sandbox.environment["TALLYFY_VAULT_KEY_FILE"] = sandbox.keyPath
        sandbox.environment["TALLYFY_VAULT_ETCD_USER"] = "vault"
        sandbox.environment["TALLYFY_VAULT_ETCD_PASSWORD_FILE"] = try sandbox.write(password + "\n", to: "etcd-password")
        try sandbox.ok(["--vault", cluster.location("/tallyfy/allowed"), "init"])
        try sandbox.ok(["--vault", cluster.location("/tallyfy/allowed"), "keys", "list"])
        // One login per process: a slot change reads the vault, takes the
        // lock, writes and frees the lock through one gateway, so it
        // authenticates once (plain HTTP here, so strace sees each request).
        try sandbox.ok(["keygen", sandbox.path("second.key")])
        let trace = sandbox.path("strace-writes.log")
        let change = try runProcess(URL(fileURLWithPath: "/usr/bin/strace"),
            ["-f", "-qq", "-s", "64", "-e", "trace=write,writev,sendto,sendmsg", "-o", trace, BuildProducts.vault.path,
             "--vault", cluster.location("/tallyfy/allowed"), "keys", "add", "--new-key-file", sandbox.path("second.key"), "--label", "second"],
            environment: sandbox.environment)
        #expect(change.status == 0, "\(change.brief)")
        let requests = try String(contentsOfFile: trace, encoding: .utf8).split(separator: "\n").filter { $0.contains("POST /v3/") }
        #expect(requests.filter { $0.contains("POST /v3/auth/authenticate") }.count == 1, "\(requests.count) requests")
        #expect(requests.filter { $0.contains("POST /v3/kv/txn") }.count >= 2, "the lock and the write were seen: \(requests.count) requests")
        // An agent reads, renews and watches through the same gateway: one
        // login for its whole life (its watch used to log in on its own).
        let runtime = sandbox.root.appendingPathComponent("run")
        try FileManager.default.createDirectory(at: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        sandbox.environment["XDG_RUNTIME_DIR"] = runtime.path
        let agentTrace = sandbox.path("strace-agent.log")
        let agent = try BackgroundCommand(URL(fileURLWithPath: "/usr/bin/strace"),
            ["-f", "-qq", "-s", "64", "-e", "trace=write,writev,sendto,sendmsg", "-o", agentTrace, BuildProducts.vault.path,
             "--vault", cluster.location("/tallyfy/allowed"), "agent"],
            environment: sandbox.environment, in: sandbox.root)
        #expect(ProcView.waitUntil(seconds: 30) { agent.stderrSoFar.contains("watching ") || !agent.isRunning }, "\(agent.stderrSoFar)")
        try sandbox.ok(["--vault", cluster.location("/tallyfy/allowed"), "agent", "stop"])
        _ = agent.wait()
        let agentRequests = try String(contentsOfFile: agentTrace, encoding: .utf8).split(separator: "\n").filter { $0.contains("POST /v3/") }
        #expect(agentRequests.filter { $0.contains("POST /v3/auth/authenticate") }.count == 1, "\(agentRequests.count) requests")
        #expect(agentRequests.contains { $0.contains("POST /v3/watch") }, "the watch was seen")
        let denied = try sandbox.refused(["--vault", cluster.location("/tallyfy/other"), "init"], status: 77)
        #expect(denied.stderr.contains("refused user vault"), "\(denied.stderr)")
        #expect(!denied.stderr.contains(password))
        let wrong = try sandbox.refused(["--vault", cluster.location("/tallyfy/allowed"), "keys", "list"], status: 77,
            env: ["TALLYFY_VAULT_ETCD_PASSWORD_FILE": try sandbox.write("wrong\n", to: "wrong-password"),
                "XDG_CACHE_HOME": sandbox.path("empty-cache")])
        #expect(wrong.stderr.contains("TALLYFY_VAULT_ETCD_PASSWORD_FILE"), "\(wrong.stderr)")
        let exposed = try sandbox.write(password + "\n", to: "exposed-password", mode: 0o644)
        let loose = try sandbox.refused(["--vault", cluster.location("/tallyfy/allowed"), "keys", "list"], status: 77,
            env: ["TALLYFY_VAULT_ETCD_PASSWORD_FILE": exposed, "XDG_CACHE_HOME": sandbox.path("empty-cache")])
        #expect(loose.stderr.contains("chmod 600"), "\(loose.stderr)")
    }

    @Test func killingTheLeaderMidRefreshLosesNothing() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }
        // A 60-second token: an expired one is renewed with a twelfth of its
        // lifetime (5 s) to wait for Tallyfy, longer than the 2 s delay below.
        let emulator = try await Emulator.start(clients: [(client, secret)], appTokenTTL: 60)
        defer { _ = emulator.stop() }
        let sandbox = try loggedIn(on: cluster.location(), emulator)
        sandbox.environment["TALLYFY_VAULT_TEST_NOW"] = "+1h"
        try await emulator.setLifetimes(app: 604_800)
        try await emulator.reset()
        // The token request is slow, so the leader dies while it is in flight.
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "delay", delayMs: 2000, times: 1))
        let refresh = try sandbox.launch(["token"])
        let leader = try EtcdCluster.tool(["leader", "--dir", cluster.folder]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let deadline = ContinuousClock.now + .seconds(15)
        while try await emulator.counts()["token"] ?? 0 < 1, refresh.isRunning, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))  // polling for the request to arrive, not a fixed wait
        }
        try cluster.kill(member: Int(leader) ?? 1)
        let result = refresh.wait()
        #expect(result.status == 0, "\(result.brief)")
        let token = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try sandbox.ok(["token", "--no-refresh"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == token)
        #expect(try await emulator.counts()["token"] == 1)
    }

    /// etcd applied the transaction but its answer never arrived (a
    /// connection cut in a leader change), so the same transaction is sent
    /// again and its condition now fails. Both the lock's and the write's
    /// transactions lose their answers here: the process must see that it
    /// holds the lock and that its write committed (never clean it up as a
    /// loser's), and the renewal seals the one token Tallyfy issued.
    @Test func aTransactionWhoseAnswerWasLostIsRecognisedAsDone() async throws {
        let cluster = try EtcdCluster.start(members: 1)
        defer { withExtendedLifetime(cluster) {} }
        let emulator = try await Emulator.start(clients: [(client, secret)], appTokenTTL: 1)
        defer { _ = emulator.stop() }
        let sandbox = try loggedIn(on: cluster.location(), emulator)
        try await emulator.setLifetimes(app: 604_800)
        try await emulator.reset()
        // An hour on, the 1-second token has expired: `token` renews it.
        let lost = ["TALLYFY_VAULT_TEST_LOSE_TXN_ANSWERS": "2", "TALLYFY_VAULT_TEST_NOW": "+1h"]
        let renewed = try sandbox.ok(["token"], env: lost).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try await emulator.counts()["token"] == 1)
        try sandbox.ok(["--profile", "second", "credentials", "set", "--org", "org-test", "--client-id", client, "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: secret, env: lost)
        // Intact, as another machine (no cache) reads it from etcd; the lock was given back.
        let other = try machine(location: sandbox.vaultLocation, key: sandbox.keyPath)
        #expect(try other.ok(["token", "--no-refresh"], env: ["TALLYFY_VAULT_TEST_NOW": "+1h"]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines) == renewed)
        try other.ok(["--profile", "second", "credentials", "show"])
        let keys = try #require(other.etcdKeys).all().map(\.key)
        #expect(keys.filter { $0.contains("/chunks/") }.count == 1, "\(keys)")
        try other.ok(["--profile", "third", "credentials", "set", "--org", "org-test", "--client-id", client, "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: secret, env: ["TALLYFY_VAULT_LOCK_TIMEOUT": "0"])
    }

    /// A machine cut from Tallyfy but not from etcd holds the fleet's lock
    /// while its token request hangs (found by tools/partition-test): it must
    /// give the lock up while another machine can still renew before the
    /// sealed token expires, not hold it until the token has expired for
    /// everyone. The 24-second token has at most 12 s left by both clocks;
    /// a's request hangs for 30 s; b, waiting for the lock, must renew within
    /// those 12 s (without the bound a's lock outlasts b's 10 s wait: 75).
    @Test func aRenewalStuckOnTallyfyLetsAnotherMachineRenewBeforeTheTokenExpires() async throws {
        let cluster = try EtcdCluster.start(members: 1)
        defer { withExtendedLifetime(cluster) {} }
        let emulator = try await Emulator.start(clients: [(client, secret)], appTokenTTL: 24)
        defer { _ = emulator.stop() }
        let loggingIn = ContinuousClock.now  // the sealed token expires 24 s after its request, which comes later
        let a = try loggedIn(on: cluster.location(), emulator)
        let b = try machine(location: a.vaultLocation, key: a.keyPath)
        let sealed = try a.ok(["token", "--no-refresh"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let nearTheEnd = ["TALLYFY_VAULT_TEST_NOW": "+12s"]
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "delay", delayMs: 30_000, times: 1))
        let stuck = try a.launch(["exec", "--min-ttl", "1h", "--", "printenv", "TALLYFY_TOKEN"], env: nearTheEnd)
        let deadline = ContinuousClock.now + .seconds(20)
        while try await emulator.counts()["token"] ?? 0 < 2, stuck.isRunning, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))  // polling for a's request to arrive, not a fixed wait
        }
        let other = try b.launch(["exec", "--min-ttl", "1h", "--", "printenv", "TALLYFY_TOKEN"], env: nearTheEnd)
        let renewed = other.wait()
        #expect(renewed.status == 0, "\(renewed.brief)")
        #expect(ContinuousClock.now - loggingIn < .seconds(12), "b renewed only after the sealed token had expired")
        let token = renewed.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!token.isEmpty && token != sealed)
        let gaveUp = stuck.wait()
        #expect(gaveUp.status == 69, "\(gaveUp.brief)")
        #expect(gaveUp.stderr.contains("gave up so that another process or machine can renew it"), "\(gaveUp.stderr)")
        #expect(!gaveUp.stdout.contains(sealed), "a handed out the token it could not renew")
        // One request each: login, a's (given up), b's.
        #expect(try await emulator.counts()["token"] == 3)
        // The vault holds b's token (a machine with no cache reads it from etcd).
        let third = try machine(location: a.vaultLocation, key: a.keyPath)
        #expect(try third.ok(["token", "--no-refresh"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == token)
    }

    @Test func aLockWhoseHolderDiedExpiresWithItsLease() async throws {
        let cluster = try EtcdCluster.start(members: 1)
        defer { withExtendedLifetime(cluster) {} }
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let sandbox = try Self.sandbox(on: cluster.location())
        try sandbox.ok(["init"])
        try sandbox.storeCredentials(for: emulator, secret: secret)
        // A login that hangs on Tallyfy while holding the fleet-wide lock, then dies.
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "delay", delayMs: 30_000, times: 1))
        let holder = try sandbox.launch(["login"])
        let deadline = ContinuousClock.now + .seconds(15)
        while try await emulator.counts()["token"] ?? 0 < 1, holder.isRunning, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        holder.kill()
        _ = holder.wait()
        // Another writer waits for the lease to expire (3 s), then writes.
        let started = ContinuousClock.now
        try sandbox.ok(["--profile", "second", "credentials", "set", "--org", "org-test", "--client-id", client,
            "--secret-stdin", "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL],
            stdin: secret, env: ["TALLYFY_VAULT_LOCK_TIMEOUT": "20"])
        #expect(ContinuousClock.now - started < .seconds(7), "the dead holder's lock outlived its 3-second lease")
        // With a short wait, a held lock is 75 and says why.
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "delay", delayMs: 5_000, times: 1))
        let slow = try sandbox.launch(["login"])
        while try await emulator.counts()["token"] ?? 0 < 2, slow.isRunning, ContinuousClock.now < deadline + .seconds(20) {
            try await Task.sleep(for: .milliseconds(20))
        }
        let busy = try sandbox.refused(["--profile", "third", "credentials", "set", "--org", "org-test", "--client-id", client,
            "--secret-stdin", "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL],
            status: 75, stdin: secret, env: ["TALLYFY_VAULT_LOCK_TIMEOUT": "0.5"])
        #expect(busy.stderr.contains("lock"), "\(busy.stderr)")
        #expect(slow.wait().status == 0)
    }

    /// The lock's lease is short (3 s), so a live holder must keep it alive
    /// at every member: one that hangs (paused) must not cost the holder its
    /// lock while it waits for Tallyfy, or a second machine would renew too.
    @Test func aLiveHolderKeepsTheLockWhileAMemberHangs() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let sandbox = try Self.sandbox(on: cluster.location())
        try sandbox.ok(["init"])
        try sandbox.storeCredentials(for: emulator, secret: secret)
        // A login that waits 40 s for Tallyfy while holding the lock (no
        // token is sealed yet, so nothing cuts the wait short): longer than
        // the other machine takes to give up, each of whose commands first
        // waits 3 s for the hung member.
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "delay", delayMs: 40_000, times: 1))
        let holder = try sandbox.launch(["login"], env: ["TALLYFY_VAULT_HTTP_TIMEOUT": "60"])
        let deadline = ContinuousClock.now + .seconds(15)
        while try await emulator.counts()["token"] ?? 0 < 1, holder.isRunning, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        // The member the holder talks to (the first: it answered) hangs.
        try cluster.signal(member: 1, SIGSTOP)
        defer { try? cluster.signal(member: 1, SIGCONT) }
        let other = try machine(location: sandbox.vaultLocation, key: sandbox.keyPath)
        let busy = try other.refused(["--profile", "second", "credentials", "set", "--org", "org-test", "--client-id", client,
            "--secret-stdin", "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL],
            status: 75, stdin: secret, env: ["TALLYFY_VAULT_LOCK_TIMEOUT": "6"])
        #expect(busy.stderr.contains("lock"), "\(busy.stderr)")
        #expect(holder.isRunning, "the holder ended before the other machine gave up: the test proved nothing")
        try cluster.signal(member: 1, SIGCONT)
        holder.kill()
        _ = holder.wait()
    }

    /// A member that hangs costs a process one wait (3 s), not one per
    /// operation: every operation used to start again at the first member,
    /// so a write (a read, then a lease and the lock) waited twice, and an
    /// agent at every renewal (found by tools/partition-test).
    @Test func aHungFirstMemberCostsAProcessOneWait() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let sandbox = try Self.sandbox(on: cluster.location())
        try sandbox.ok(["init"])
        let other = try machine(location: sandbox.vaultLocation, key: sandbox.keyPath)
        try cluster.signal(member: 1, SIGSTOP)
        defer { try? cluster.signal(member: 1, SIGCONT) }
        let started = ContinuousClock.now
        try other.ok(["credentials", "set", "--org", "org-test", "--client-id", client, "--secret-stdin",
            "--token-url", emulator.tokenURL, "--api-url", emulator.apiURL], stdin: secret)
        let took = ContinuousClock.now - started
        #expect(took < .seconds(5), "a write with the first member hung took \(took): it waited for that member more than once")
        try cluster.signal(member: 1, SIGCONT)
    }

    @Test func aRotationOnOneMachineServesEveryMachine() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }
        let newSecret = "cs-new-\(UUID().uuidString)"
        let emulator = try await Emulator.start(clients: [(client, secret), (client, newSecret)])
        defer { _ = emulator.stop() }
        let location = cluster.location()
        let keyHolder = try Sandbox()
        try keyHolder.ok(["keygen", keyHolder.keyPath])
        let a = try machine(location: location, key: keyHolder.keyPath)
        let b = try machine(location: location, key: keyHolder.keyPath)
        try a.ok(["init"])
        try a.storeCredentials(for: emulator, secret: secret)
        try a.ok(["login"])
        let before = try b.ok(["token"]).stdout  // b's cache now holds the old secret
        try a.ok(["rotate-secret", "--secret-stdin"], stdin: newSecret)
        try await emulator.setSecrets(client: client, secrets: [newSecret])
        // b's sealed token is still good from its cache; a renewal on b uses the new secret from etcd.
        #expect(try b.ok(["token"]).stdout == before)
        try b.ok(["login"])
        #expect(try b.ok(["token"]).stdout != before)
        // a's fast path may still hand out its cached (valid) token; any read
        // that asks the cluster refreshes a's cache, and then both agree.
        try a.ok(["status"])
        #expect(try a.ok(["token", "--no-refresh"]).stdout == b.ok(["token", "--no-refresh"]).stdout)
    }

    /// The agent on b watches the vault's keys: a change on a reaches b's
    /// cache through the watch (while it is live the agent never polls etcd),
    /// and the watch moves to another member when its member dies.
    @Test func anAgentSeesAnotherMachinesChangeThroughItsWatch() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let (a, b, agent, location) = try machinesWithAnAgentOnB(cluster, emulator)
        defer { agent.kill(SIGTERM); _ = agent.wait() }
        func watchedMembers() -> [String] { Self.watchedMembers(agent, location) }
        #expect(ProcView.waitUntil(seconds: 30) { !watchedMembers().isEmpty || !agent.isRunning }, "\(agent.stderrSoFar)")

        func changes() -> Int { agent.stderrSoFar.components(separatedBy: "the vault changed in etcd").count - 1 }
        for round in 1...2 {
            let (changesBefore, watchesBefore) = (changes(), watchedMembers().count)
            try a.ok(["rotate-secret", "--secret-stdin", "--no-verify"], stdin: "cs-rotated-\(UUID().uuidString)")
            let written = try Data(contentsOf: try #require(cacheFiles(a).first))
            let seen = ProcView.waitUntil(seconds: 30) {
                (try? Data(contentsOf: cacheFiles(b).first ?? URL(fileURLWithPath: "/nonexistent"))) == written
            }
            #expect(seen, "round \(round): b's agent did not refresh its cache; agent: \(agent.stderrSoFar)")
            // The agent logs the change after it has written the cache: wait
            // for the line too. Or, if etcd ended the watch meanwhile (it does
            // when the member loses its leader, as elections on a loaded
            // machine make it), the agent caught up with one read when it
            // watched again, and says so.
            let logged = ProcView.waitUntil(seconds: 10) {
                changes() == changesBefore + 1 || watchedMembers().count > watchesBefore
            }
            #expect(logged && changes() <= changesBefore + 1, "round \(round): \(agent.stderrSoFar)")
            guard round == 1, let member = watchedMembers().last else { continue }
            // The member the watch goes through dies: the agent watches through another.
            let index = try #require(cluster.endpoints.split(separator: ",").firstIndex { $0 == member })
            try cluster.kill(member: index + 1)
            #expect(ProcView.waitUntil(seconds: 30) { watchedMembers().count >= 2 && watchedMembers().last != member },
                "\(agent.stderrSoFar)")
        }

        // The member watched loses the cluster's leader (the last other member
        // dies): etcd ends the stream rather than leaving it silent, and the
        // agent says so. With the cluster whole again it watches again.
        let endpoints = cluster.endpoints.split(separator: ",").map(String.init)
        let watched = try #require(watchedMembers().last)
        let firstWatched = try #require(watchedMembers().first)
        let first = try #require(endpoints.firstIndex(of: firstWatched))
        let last = try #require(endpoints.indices.first { $0 != first && endpoints[$0] != watched })
        try cluster.kill(member: last + 1)
        #expect(ProcView.waitUntil(seconds: 30) { agent.stderrSoFar.contains("lost the watch on \(location) at \(watched): etcdserver: no leader") },
            "\(agent.stderrSoFar)")
        let watches = watchedMembers().count
        try cluster.revive(member: first + 1)
        try cluster.revive(member: last + 1)
        #expect(cluster.waitHealthy())
        #expect(ProcView.waitUntil(seconds: 30) { watchedMembers().count > watches }, "\(agent.stderrSoFar)")
        try a.ok(["rotate-secret", "--secret-stdin", "--no-verify"], stdin: "cs-rotated-\(UUID().uuidString)")
        let written = try Data(contentsOf: try #require(cacheFiles(a).first))
        #expect(ProcView.waitUntil(seconds: 30) {
            (try? Data(contentsOf: cacheFiles(b).first ?? URL(fileURLWithPath: "/nonexistent"))) == written
        }, "b's agent did not refresh its cache after the cluster came back; agent: \(agent.stderrSoFar)")
    }

    /// The member a watch goes through hangs (SIGSTOP): its connection stays
    /// open and says nothing, so the watch cannot tell. The agent's periodic
    /// check still brings a change made through the other members into the
    /// cache.
    @Test func aSilentlyHungWatchDoesNotLeaveTheCacheStale() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }
        let emulator = try await Emulator.start(clients: [(client, secret)])
        defer { _ = emulator.stop() }
        let (a, b, agent, location) = try machinesWithAnAgentOnB(cluster, emulator)
        defer { agent.kill(SIGTERM); _ = agent.wait() }
        #expect(ProcView.waitUntil(seconds: 30) { !Self.watchedMembers(agent, location).isEmpty || !agent.isRunning }, "\(agent.stderrSoFar)")
        let watched = Self.watchedMembers(agent, location).last
        let endpoints = cluster.endpoints.split(separator: ",").map(String.init)
        let member = try #require(endpoints.firstIndex { $0 == watched }) + 1
        try cluster.signal(member: member, SIGSTOP)
        defer { try? cluster.signal(member: member, SIGCONT) }
        // a writes through the two members left (a majority).
        try a.ok(["rotate-secret", "--secret-stdin", "--no-verify"], stdin: "cs-rotated-\(UUID().uuidString)")
        let written = try Data(contentsOf: try #require(cacheFiles(a).first))
        let seen = ProcView.waitUntil(seconds: 60) {
            (try? Data(contentsOf: cacheFiles(b).first ?? URL(fileURLWithPath: "/nonexistent"))) == written
        }
        #expect(seen, "b's cache stayed stale behind a hung watch; agent: \(agent.stderrSoFar)")
        // The agent logs just after it has written the cache.
        #expect(ProcView.waitUntil(seconds: 30) { agent.stderrSoFar.contains("found by the periodic check") }, "\(agent.stderrSoFar)")
    }

    /// The leader dies while a renewal's write transaction is on its way: the
    /// write is held just before its transaction (a debug-build gate), the
    /// leader is killed, and the transaction is sent to a cluster electing a
    /// new leader. It completes after the election; the token Tallyfy issued
    /// is the one sealed, and no second request is made.
    @Test func killingTheLeaderDuringTheWriteTransactionLosesNothing() async throws {
        let cluster = try EtcdCluster.start()
        defer { withExtendedLifetime(cluster) {} }
        let emulator = try await Emulator.start(clients: [(client, secret)], appTokenTTL: 1)
        defer { _ = emulator.stop() }
        let sandbox = try loggedIn(on: cluster.location(), emulator)
        sandbox.environment["TALLYFY_VAULT_TEST_NOW"] = "+1h"
        try await emulator.setLifetimes(app: 604_800)
        try await emulator.reset()
        let before = try sandbox.vaultBytes()

        let gate = sandbox.path("commit-gate")
        #expect(mkfifo(gate, 0o600) == 0)
        let refresh = try sandbox.launch(["token"], env: ["TALLYFY_VAULT_TEST_COMMIT_GATE": gate])
        // The gate's writer can open only once the renewal waits at it.
        var writer: Int32 = -1
        #expect(ProcView.waitUntil(seconds: 30) {
            writer = open(gate, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
            return writer >= 0 || !refresh.isRunning
        }, "the renewal never reached its transaction: \(refresh.stderrSoFar)")
        #expect(try await emulator.counts()["token"] == 1, "the token was not requested before the write")
        let leader = try EtcdCluster.tool(["leader", "--dir", cluster.folder]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try cluster.kill(member: try #require(Int(leader)))
        close(writer)  // let the transaction go

        let result = refresh.wait()
        #expect(result.status == 0, "\(result.brief)")
        let token = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        // Sealed: another machine (no cache) reads it from etcd.
        let other = try machine(location: sandbox.vaultLocation, key: sandbox.keyPath)
        other.environment["TALLYFY_VAULT_TEST_NOW"] = "+1h"
        #expect(try other.ok(["token", "--no-refresh"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == token)
        #expect(try await emulator.counts()["token"] == 1, "a second token request")
        #expect(try sandbox.vaultBytes() != before)
    }
}

import Foundation
import TallyfyVault
import Testing

/// What a running agent keeps in its memory (issue 24, F4), read the way an
/// attacker with root would: every readable mapping of `/proc/PID/mem`. The
/// agent must hold the data key while unlocked (in guarded memory), and
/// nothing else: no client secret after renewals, no passphrase from its
/// environment, and after `agent lock` not the key either. Only counts are
/// printed, never the bytes looked for.
@Suite struct AgentMemoryTests {
    @Test(.enabled(if: getuid() == 0))
    func afterRenewalsAndALockTheAgentHoldsNoSecretAndNoKey() async throws {
        let agents = AgentTests()
        let secret = agents.secret
        let passphrase = "pp-\(UUID().uuidString)"
        // 5 s tokens: the agent renews each about every 4 s.
        let (sandbox, emulator, unlock, _) = try await agents.world(appTokenTTL: 5, unlock: ["TALLYFY_VAULT_PASSPHRASE": passphrase])
        defer { _ = emulator.stop() }
        let dataKey = try await Self.dataKey(vaultPath: sandbox.vaultPath, passphrase: passphrase)

        // A foreground agent given the passphrase in its environment, as the red team started it.
        let agent = try agents.startAgent(sandbox, unlock: unlock)
        defer { agent.kill(SIGTERM) }
        try #require(agent.isRunning, "the agent did not start: \(agent.wait().brief)")

        // Six renewals by the agent, then a long token, so no renewal is in flight while memory is read.
        let before = try await emulator.counts()["token", default: 0]
        let renewed = await eventually(seconds: 120) {
            (try? await emulator.counts())?["token", default: 0] ?? 0 >= before + 6
        }
        try #require(renewed, "the agent did not renew six times: \(agent.stderrSoFar)")
        try await emulator.setLifetimes(app: 3600)
        let settled = ProcView.waitUntil(seconds: 30) {
            guard let json = try? sandbox.run(["token", "--format", "json"]).stdout,
                let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
            else { return false }
            return (object["expiresInSeconds"] as? Int ?? 0) > 60
        }
        try #require(settled, "the agent did not take a long token: \(agent.stderrSoFar)")
        let renewals = agent.stderrSoFar.components(separatedBy: "renewed the application token").count - 1
        #expect(renewals >= 6, "the agent logged \(renewals) renewals")

        let unlocked = try ProcessMemory.count(pid: agent.pid, needles: ["key": dataKey, "secret": Array(secret.utf8),
            "passphrase": Array(passphrase.utf8)])
        print("agent memory after \(renewals) renewals: data key \(unlocked["key"]!), client secret \(unlocked["secret"]!), passphrase \(unlocked["passphrase"]!) (\(unlocked["bytes"]!) bytes read)")
        // The scan sees guarded memory: the key an unlocked agent holds is found.
        #expect(unlocked["key"]! >= 1, "the scan found no data key in an unlocked agent: it does not see the agent's memory")
        #expect(unlocked["secret"] == 0, "the client secret is in the agent's memory after its renewals")
        #expect(unlocked["passphrase"] == 0, "the passphrase is in the agent's memory")
        // A Bool, never the environment itself: a failed expectation prints its operands.
        let environ = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(agent.pid)/environ"))) ?? Data()
        let variableKept = String(decoding: environ, as: UTF8.self).contains("TALLYFY_VAULT_PASSPHRASE=")
        #expect(!variableKept, "the passphrase variable is in the agent's environment")

        try sandbox.ok(["agent", "lock"])
        // The lock drops the held vault at once or at the agent's next tick (a quarter second).
        var locked: [String: Int] = [:]
        let forgot = ProcView.waitUntil(seconds: 5) {
            locked = (try? ProcessMemory.count(pid: agent.pid, needles: ["key": dataKey, "secret": Array(secret.utf8),
                "passphrase": Array(passphrase.utf8)])) ?? ["key": -1]
            return locked["key"] == 0
        }
        print("agent memory after agent lock: data key \(locked["key"] ?? -1), client secret \(locked["secret"] ?? -1), passphrase \(locked["passphrase"] ?? -1)")
        #expect(forgot, "the data key is still in the agent's memory after `agent lock`")
        #expect(locked["secret"] == 0 && locked["passphrase"] == 0, "a secret is still in the locked agent's memory")
        #expect(agent.isRunning)
    }

    /// The vault's data key, unwrapped here by the library from the passphrase.
    static func dataKey(vaultPath: String, passphrase: String) async throws -> [UInt8] {
        let secret = UnlockSecret(kind: .passphrase, bytes: SecretBytes(copying: Array(passphrase.utf8)), origin: "the test")
        let unlocker = VaultUnlocker(secrets: [secret])
        _ = try await VaultStore(path: vaultPath).open(with: unlocker)
        return try #require(unlocker.withDataKeyBytes { Array($0) })
    }
}

/// Reads another process's memory as root does: every readable mapping in
/// `/proc/PID/maps`, through `/proc/PID/mem`.
enum ProcessMemory {
    /// How many times each needle occurs, and under "bytes" how much was read.
    static func count(pid: Int32, needles: [String: [UInt8]]) throws -> [String: Int] {
        let maps = try readWhole("/proc/\(pid)/maps")
        let memory = open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC)
        guard memory >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(memory) }
        var counts = needles.mapValues { _ in 0 }
        var total = 0
        let longest = needles.values.map(\.count).max() ?? 1
        let chunkSize = 1 << 20
        var buffer = [UInt8](repeating: 0, count: chunkSize + longest)
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, fields[1].hasPrefix("r"), !line.hasSuffix("[vvar]"), !line.hasSuffix("[vsyscall]") else { continue }
            let range = fields[0].split(separator: "-")
            guard range.count == 2, let start = UInt64(range[0], radix: 16), let end = UInt64(range[1], radix: 16) else { continue }
            // Each chunk is read with the needle's length less one of the next,
            // so an occurrence across two chunks is counted once.
            var offset = start
            while offset < end {
                let want = Int(min(UInt64(chunkSize + longest - 1), end - offset))
                let got = buffer.withUnsafeMutableBytes { pread(memory, $0.baseAddress!, want, off_t(offset)) }
                guard got > 0 else { break }
                let counted = min(got, chunkSize)  // occurrences must start in this chunk
                for (name, needle) in needles {
                    counts[name, default: 0] += occurrences(of: needle, in: buffer, length: got, startingBefore: counted)
                }
                total += counted
                offset += UInt64(counted)
            }
        }
        counts["bytes"] = total
        return counts
    }

    /// A /proc file to its end: its size says 0, and Foundation's readers
    /// stop early on it (`String(contentsOfFile:)` gave a sixth of `maps`).
    static func readWhole(_ path: String) throws -> String {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let got = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress!, $0.count) }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { break }
            bytes += chunk[0..<got]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func occurrences(of needle: [UInt8], in buffer: [UInt8], length: Int, startingBefore limit: Int) -> Int {
        guard !needle.isEmpty else { return 0 }
        var found = 0
        buffer.withUnsafeBytes { haystack in
            needle.withUnsafeBytes { pattern in
                // memchr finds each candidate of one byte of the needle (not
                // 0x00 or 0xff, which fill free memory); memcmp checks the whole.
                let anchor = needle.firstIndex { $0 != 0 && $0 != 0xff } ?? 0
                let byte = Int32(needle[anchor])
                var position = anchor
                while position < limit + anchor, position < length,
                    let hit = memchr(haystack.baseAddress! + position, byte, length - position)
                {
                    let at = haystack.baseAddress!.distance(to: UnsafeRawPointer(hit)) - anchor
                    guard at < limit else { break }
                    if at + pattern.count <= length, memcmp(haystack.baseAddress! + at, pattern.baseAddress!, pattern.count) == 0 {
                        found += 1
                    }
                    position = at + anchor + 1
                }
            }
        }
        return found
    }
}

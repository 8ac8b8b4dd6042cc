import Foundation
import Testing

/// This machine's cache of a vault on etcd keeps only vaults: garbage written
/// under the prefix is refused when read, and never replaces the good copy.
@Suite struct EtcdCacheTests {
    @Test func aGarbageChunkInEtcdNeverReplacesTheCachedVault() async throws {
        let world = try await LoggedIn.start(vault: .etcd)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let cacheFile = try #require(sandbox.etcdCacheFiles.first, "login left no cached copy")
        let cached = try Data(contentsOf: URL(fileURLWithPath: cacheFile))

        // Someone with write access to etcd puts garbage in its place (one chunk).
        var garbage = Data(count: 700_000)
        for index in garbage.indices { garbage[index] = UInt8.random(in: 0...255) }
        try sandbox.replaceSealedVault(with: garbage)

        // The commands that read the cluster say the vault there is not a
        // vault (a renewal opens it before caching it; these read it first)…
        // (`check` says so as a monitoring check does: UNKNOWN, status 3.)
        for (arguments, status) in [(["status"], Int32(65)), (["check"], 3), (["token", "--min-ttl", "8d"], 65)] {
            let refused = try sandbox.run(arguments)
            #expect(refused.status == status, "\(refused.brief)")
            #expect((refused.stdout + refused.stderr).contains("not a tallyfy-vault file"), "\(refused.brief)")
            // …and the cached copy is the good one still, byte for byte.
            #expect(try Data(contentsOf: URL(fileURLWithPath: cacheFile)) == cached, "after \(arguments)")
        }

        // So with the vault gone from etcd, the fresh token in the cache is
        // still served (a fresh token never waits for the cluster).
        try sandbox.removeVault()
        let token = try sandbox.ok(["token"])
        #expect(!token.stdout.isEmpty, "\(token.brief)")
    }
}

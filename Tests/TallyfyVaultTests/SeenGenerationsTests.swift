import Foundation
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

/// The rollback refusal (`SeenGenerations`) at the library level: a vault
/// older than one this machine has seen is refused, but a read that another
/// process's write merely overtook is not a rollback.
@Suite struct SeenGenerationsTests {
    let key = TestKeys.keyFile(3)

    private func world() throws -> (folder: String, path: String, environment: [String: String]) {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("tv-seen-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        let environment = ["HOME": folder, "XDG_STATE_HOME": folder + "/state", "XDG_DATA_HOME": folder + "/data", "XDG_CACHE_HOME": folder + "/cache"]
        return (folder, folder + "/vault", environment)
    }

    /// tools/partition-test: `users token` read generation 383, and by the
    /// time it opened it this machine had seen 389 (written meanwhile by
    /// others; the read's answer came late over a lossy link): 65, "rolled
    /// back", for a vault nobody rolled back.
    @Test func aReadOvertakenByAnotherWriteIsNotARollback() async throws {
        let (folder, path, environment) = try world()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let store = VaultStore(path: path, environment: environment)
        try await store.create(try UnlockedVault.create(secret: key, label: "k", kdf: .moderate))
        let broker = TokenBroker(store: store, secrets: [key], environment: environment)

        let overtaken = try await store.read()  // generation 1
        let first = try Data(contentsOf: URL(fileURLWithPath: path))
        // Another process changes the vault meanwhile: this machine remembers generation 2.
        try await VaultStore(path: path, environment: environment).update(with: [key]) {
            $0.content.profiles["default"] = TestKeys.profile()
        }
        let reread = try await broker.open(store.read())
        #expect(store.rememberedGeneration(of: reread.content.id!) == 2)

        let opened = try await broker.open(overtaken)
        #expect(opened.content.generation == 2)
        #expect(opened.content.profiles["default"] != nil)

        // A vault really put back is still refused, read again or not.
        try first.write(to: URL(fileURLWithPath: path))
        let refused = try await #require(throws: VaultError.self) { try await broker.open(store.read()) }
        #expect(refused.cause == .rolledBack)
        #expect(refused.exitStatus == 65)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == first)
    }

    /// Without `HOME` (a service started with a bare environment) the
    /// rollback memory and the audit log live in the passwd entry's home,
    /// where the default vault is looked for: the memory used to need
    /// `HOME` and was silently off, while the vault was found.
    @Test func withoutHOMEEverythingIsKeptInThePasswdEntrysHome() throws {
        let entry = try #require(getpwuid(getuid()), "this uid has a passwd entry")
        let home = String(cString: entry.pointee.pw_dir)
        for environment in [[:], ["HOME": "relative/home"]] {
            #expect(HomeFolder.path(environment: environment) == home)
            #expect(try #require(SeenGenerations(environment: environment)).folder == home + "/.local/state/tallyfy-vault/seen")
            #expect(AuditTrail(environment: environment).logPath(vaultID: "0123456789abcdef0123456789abcdef")
                == home + "/.local/state/tallyfy-vault/audit/0123456789abcdef0123456789abcdef.log")
            #expect(VaultStore.defaultPath(environment: environment) == home + "/.local/share/tallyfy-vault/vault")
        }
        #expect(HomeFolder.path(environment: ["HOME": "/elsewhere"]) == "/elsewhere")
    }
}

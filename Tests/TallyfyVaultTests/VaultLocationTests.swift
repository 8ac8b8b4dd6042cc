import Foundation
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

/// How `--vault` is read: a file path, an etcd location, or a refusal (64).
@Suite struct VaultLocationTests {
    @Test(arguments: ["vault", "./vault", "/var/lib/tallyfy/vault", "dir/with:colon", "C:vault", "./a://b", "name:with//slashes"])
    func filePaths(_ text: String) throws {
        #expect(try VaultLocation(parsing: text, environment: [:]) == .file(text))
    }

    @Test func etcdLocations() throws {
        let location = try EtcdLocation(parsing: "etcd://127.0.0.1:2379,localhost:22379,[::1]:32379/tallyfy/prod/", environment: [:])
        #expect(location.endpoints == ["127.0.0.1:2379", "localhost:22379", "[::1]:32379"])
        #expect(location.prefix == "/tallyfy/prod")
        #expect(!location.tls)
        #expect(location.text == "etcd://127.0.0.1:2379,localhost:22379,[::1]:32379/tallyfy/prod")

        let secure = try EtcdLocation(parsing: "etcds://etcd-1.internal:2379/tallyfy", environment: [
            "TALLYFY_VAULT_ETCD_CACERT": "/ca.pem", "TALLYFY_VAULT_ETCD_CERT": "/c.pem", "TALLYFY_VAULT_ETCD_KEY": "/c.key",
            "TALLYFY_VAULT_ETCD_USER": "vault", "TALLYFY_VAULT_ETCD_PASSWORD_FILE": "/pw",
        ])
        #expect(secure.tls && secure.caFile == "/ca.pem" && secure.certFile == "/c.pem" && secure.user == "vault")
    }

    @Test(arguments: [
        "http://127.0.0.1:2379/x",  // another scheme
        "s3://bucket/vault",
        "etcd://127.0.0.1:2379",  // no prefix
        "etcd://127.0.0.1:2379/",
        "etcd://127.0.0.1/tallyfy",  // no port
        "etcd://127.0.0.1:0/tallyfy",
        "etcd://127.0.0.1:2379,/tallyfy",  // an empty endpoint
        "etcd://user:pw@127.0.0.1:2379/tallyfy",  // credentials in the location
        "etcd://10.0.0.5:2379/tallyfy",  // plain HTTP off this machine
        "etcd://127.0.0.1:2379/tally fy",
    ])
    func refused(_ text: String) async {
        #expect(throws: VaultError.self) { try VaultLocation(parsing: text, environment: [:]) }
        let error = try? VaultLocation(parsing: text, environment: [:])
        #expect(error == nil)
        // The store keeps the refusal and throws it before touching anything.
        let store = VaultStore(path: text, environment: [:])
        await #expect(throws: VaultError.self) { try await store.checkAccess() }
        #expect(await !store.exists())
    }

    @Test func settingsThatGoTogether() {
        #expect(throws: VaultError.self) {
            try EtcdLocation(parsing: "etcd://127.0.0.1:2379/t", environment: ["TALLYFY_VAULT_ETCD_CERT": "/c.pem"])
        }
        #expect(throws: VaultError.self) {
            try EtcdLocation(parsing: "etcd://127.0.0.1:2379/t", environment: ["TALLYFY_VAULT_ETCD_USER": "vault"])
        }
    }

    /// Issue 24 F6: a name that merely starts like 127.x is not loopback and
    /// is refused when parsed (64), before anything could look it up.
    @Test(arguments: [
        "etcd://127.attacker.invalid:2379/p", "etcd://127.0.0.1.nip.io:2379/p", "etcd://127.0.0.1.example.invalid:2379/p",
        "etcd://127.0.0.1:2379,127.0.0.1.nip.io:2379/p", "etcd://localhost.:2379/p", "etcd://[::2]:2379/p",
    ])
    func plainEtcdGoesToLiteralLoopbackOnly(_ text: String) throws {
        let error = try #require(throws: VaultError.self) { try EtcdLocation(parsing: text, environment: [:]) }
        #expect(error.exitStatus == 64)
        #expect(error.message.contains("unencrypted"))
    }

    @Test(arguments: ["etcd://127.0.0.1:2379/p", "etcd://127.9.8.7:2379/p", "etcd://[::1]:2379/p", "etcd://[0:0:0:0:0:0:0:1]:2379/p"])
    func plainEtcdToLiteralLoopback(_ text: String) throws {
        _ = try EtcdLocation(parsing: text, environment: [:])
    }

    @Test func theCacheIsPrivatePerLocation() throws {
        let one = try EtcdLocation(parsing: "etcd://127.0.0.1:2379/a", environment: [:])
        let two = try EtcdLocation(parsing: "etcd://127.0.0.1:2379/b", environment: [:])
        let first = RemoteCache(location: one, environment: ["XDG_CACHE_HOME": "/c", "HOME": "/h"])
        #expect(first.path.hasPrefix("/c/tallyfy-vault/etcd/"))
        #expect(first.path != RemoteCache(location: two, environment: ["XDG_CACHE_HOME": "/c"]).path)
        #expect(RemoteCache(location: one, environment: ["HOME": "/h"]).path.hasPrefix("/h/.cache/tallyfy-vault/etcd/"))
        #expect(RemoteCache.name(for: one.text).count == 32)
    }

    @Test func prefixEnd() {
        #expect(EtcdVault.prefixEnd("/t/chunks/") == "/t/chunks0")
    }

    /// This machine's cache of an etcd location, under a fresh `XDG_CACHE_HOME` (`home`).
    static func cacheInAFolderOfItsOwn() throws -> (RemoteCache, home: String) {
        let home = FileManager.default.temporaryDirectory.appendingPathComponent("tv-cache-\(UUID().uuidString)").path
        let location = try EtcdLocation(parsing: "etcd://127.0.0.1:2379/tallyfy/cache", environment: [:])
        return (RemoteCache(location: location, environment: ["XDG_CACHE_HOME": home]), home)
    }

    /// The machine's cache of an etcd vault never goes back to an older
    /// revision: a process whose read was overtaken stores what it read after
    /// the agent stored the newer one (tools/partition-test saw the older copy
    /// put back, then refused as rolled back, 65).
    @Test func theCacheNeverGoesBackToAnOlderRevision() async throws {
        let (cache, home) = try Self.cacheInAFolderOfItsOwn()
        defer { try? FileManager.default.removeItem(atPath: home) }
        await cache.store(RemoteSnapshot(bytes: Data("generation 7".utf8), revision: 70))
        await cache.store(RemoteSnapshot(bytes: Data("generation 6".utf8), revision: 60))
        #expect(try cache.read().revision == 70 && cache.read().bytes == Data("generation 7".utf8))
        await cache.store(RemoteSnapshot(bytes: Data("generation 8".utf8), revision: 80))
        #expect(try cache.read().revision == 80 && cache.read().bytes == Data("generation 8".utf8))
        // Nothing but the cache itself is left in its folder (no lock file, no temporary).
        let folder = URL(fileURLWithPath: cache.path).deletingLastPathComponent().path
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == [URL(fileURLWithPath: cache.path).lastPathComponent])
    }

    /// A process that stopped while it held the cache folder's lock (SIGSTOP,
    /// a debugger) holds up nobody for long: a store gives up after
    /// `lockPatience` and leaves the cache as it was.
    @Test func aStoreGivesUpOnAFolderLockThatIsNotLetGo() async throws {
        let (cache, home) = try Self.cacheInAFolderOfItsOwn()
        defer { try? FileManager.default.removeItem(atPath: home) }
        await cache.store(RemoteSnapshot(bytes: Data("generation 1".utf8), revision: 10))
        let folder = open(cache.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        #expect(folder >= 0 && flock(folder, LOCK_EX) == 0)
        await cache.store(RemoteSnapshot(bytes: Data("generation 2".utf8), revision: 20))
        #expect(try cache.read().revision == 10)
        close(folder)
        await cache.store(RemoteSnapshot(bytes: Data("generation 2".utf8), revision: 20))
        #expect(try cache.read().revision == 20)
    }

    /// Whether a watch keeps the cache current belongs to one store and its
    /// copies (the agent's), never to another store of the same location
    /// in the process.
    @Test func aLiveWatchIsTheStoresOwn() {
        let watched = VaultStore(path: "etcd://127.0.0.1:2379/tallyfy/watch", environment: [:])
        let copy = watched
        let other = VaultStore(path: "etcd://127.0.0.1:2379/tallyfy/watch", environment: [:])
        watched.setWatchLive(true)
        #expect(watched.isWatchLive && copy.isWatchLive && !other.isWatchLive)
        copy.setWatchLive(false)
        #expect(!watched.isWatchLive)
    }

    /// The agent holds an etcd vault as it holds a file: pinned, through
    /// this machine's cache, while a watch keeps that cache current. A
    /// replaced cache, or a lost watch, makes it stale; without a live watch
    /// nothing is pinned.
    @Test func anEtcdVaultIsHeldThroughItsCacheWhileTheWatchIsLive() async throws {
        let home = FileManager.default.temporaryDirectory.appendingPathComponent("tv-pin-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: home) }
        let environment = ["XDG_CACHE_HOME": home, "XDG_STATE_HOME": home + "/state", "HOME": home]
        let text = "etcd://127.0.0.1:2379/tallyfy/pinned"
        let key = TestKeys.keyFile(21)
        let vault = try UnlockedVault.create(secret: key, label: "k", kdf: .moderate)
        let cache = RemoteCache(location: try EtcdLocation(parsing: text, environment: [:]), environment: environment)
        await cache.store(RemoteSnapshot(bytes: try vault.sealed(), revision: 1))
        // No watch: opened (here from the cache, as this store has no etcd
        // client), but pinned to nothing, so never current.
        let store = VaultStore(path: text, environment: environment)
        let unlocker = VaultUnlocker(secrets: [key])
        #expect(!store.isCurrent(try await store.openPinned(with: unlocker)))

        store.setWatchLive(true)
        let pinned = try await store.openPinned(with: unlocker)
        #expect(store.isCurrent(pinned))
        store.setWatchLive(false)
        #expect(!store.isCurrent(pinned))
        store.setWatchLive(true)
        #expect(store.isCurrent(pinned))
        vault.content.profiles["default"] = TestKeys.profile()
        await cache.store(RemoteSnapshot(bytes: try vault.sealed(), revision: 2))
        #expect(!store.isCurrent(pinned))
        let again = try await store.openPinned(with: unlocker)
        #expect(store.isCurrent(again) && again.vault.content.profiles["default"] != nil)
    }
}

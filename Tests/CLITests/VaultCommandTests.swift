import Foundation
import Testing

/// The vault commands of README.md, run through the real binary: each
/// success, and each refusal with its exit status and an unchanged vault.
/// Every test that involves a vault runs twice: on a vault file and on a
/// vault on etcd (the shared test cluster), where "unchanged" means every
/// key under the vault's prefix is byte-for-byte what it was.
@Suite struct VaultCommandTests {
    let secret = "cs-\(UUID().uuidString)"

    private func sandboxWithCredentials(_ kind: VaultKind) throws -> Sandbox {
        let sandbox = try Sandbox(vault: kind)
        try sandbox.initWithKeyFile()
        try sandbox.ok(["credentials", "set", "--org", "org-1", "--client-id", "client-abc", "--secret-stdin",
            "--token-url", "http://127.0.0.1:9/oauth/token", "--api-url", "http://127.0.0.1:9/api"], stdin: secret + "\n")
        return sandbox
    }

    @Test(arguments: VaultKind.allCases) func initCreatesAPrivateVaultAndRefusesToOverwrite(_ kind: VaultKind) throws {
        let sandbox = try Sandbox(vault: kind)
        try sandbox.initWithKeyFile()
        // On etcd the only copy on this machine is the cache: private too.
        let copies = kind == .file ? [sandbox.vaultPath] : sandbox.etcdCacheFiles
        #expect(copies.count == 1)
        for copy in copies {
            let attributes = try FileManager.default.attributesOfItem(atPath: copy)
            #expect((attributes[.posixPermissions] as? Int) == 0o600)
        }
        let result = try sandbox.refused(["init"], status: 64)
        #expect(result.stderr.contains("exists already"))
    }

    // File only: about the folder a vault file is created in.
    @Test func initMakesTheVaultFolderPrivate() throws {
        let sandbox = try Sandbox()
        try sandbox.ok(["keygen", sandbox.keyPath])
        let nested = sandbox.path("deep/er/vault")
        try sandbox.ok(["--vault", nested, "--key-file", sandbox.keyPath, "init"])
        let folder = try FileManager.default.attributesOfItem(atPath: sandbox.path("deep/er"))
        #expect((folder[.posixPermissions] as? Int) == 0o700)
    }

    // No vault involved: one run covers both locations.
    @Test func keygenWritesA32ByteKeyAndRefusesToOverwrite() throws {
        let sandbox = try Sandbox()
        try sandbox.ok(["keygen", sandbox.keyPath])
        let key = try Data(contentsOf: URL(fileURLWithPath: sandbox.keyPath))
        #expect(key.count == 32)
        let attributes = try FileManager.default.attributesOfItem(atPath: sandbox.keyPath)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let again = try sandbox.run(["keygen", sandbox.keyPath])
        #expect(again.status == 64)
        #expect(try Data(contentsOf: URL(fileURLWithPath: sandbox.keyPath)) == key)
    }

    @Test(arguments: VaultKind.allCases) func credentialsAreSealedShownMaskedAndRemoved(_ kind: VaultKind) throws {
        let sandbox = try sandboxWithCredentials(kind)
        let vault = try sandbox.vaultBytes()
        #expect(vault.range(of: Data(secret.utf8)) == nil, "the secret is in the vault file in the clear")
        #expect(vault.range(of: Data("client-abc".utf8)) == nil, "the client ID is in the vault file in the clear")
        let shown = try sandbox.ok(["credentials", "show"])
        #expect(shown.stdout.contains("client-abc"))
        #expect(shown.stdout.contains("********"))
        #expect(!shown.stdout.contains(secret) && !shown.stderr.contains(secret))
        try sandbox.ok(["credentials", "remove"])
        try sandbox.refused(["credentials", "show"], status: 78)
    }

    @Test(arguments: VaultKind.allCases) func wrongKeyFileIsRefused(_ kind: VaultKind) throws {
        let sandbox = try sandboxWithCredentials(kind)
        try sandbox.ok(["keygen", sandbox.path("other")])
        let result = try sandbox.refused(["credentials", "show"], status: 77, env: ["TALLYFY_VAULT_KEY_FILE": sandbox.path("other")])
        #expect(result.stderr.contains("wrong passphrase or key"))
    }

    @Test(arguments: VaultKind.allCases) func wrongPassphraseIsRefused(_ kind: VaultKind) throws {
        let sandbox = try Sandbox(vault: kind)
        let passphrase = try sandbox.write("right one\n", to: "pass")
        try sandbox.ok(["--passphrase-file", passphrase, "init"])
        let wrong = try sandbox.write("wrong one\n", to: "wrong")
        try sandbox.refused(["--passphrase-file", wrong, "credentials", "show"], status: 77)
        try sandbox.refused(["credentials", "show"], status: 77, env: ["TALLYFY_VAULT_PASSPHRASE": "also wrong"])
        // The right passphrase from the variable gets as far as "no credentials".
        try sandbox.refused(["credentials", "show"], status: 78, env: ["TALLYFY_VAULT_PASSPHRASE": "right one"])
    }

    @Test(arguments: VaultKind.allCases) func missingVaultAndMissingKeyFileAre66(_ kind: VaultKind) throws {
        let sandbox = try Sandbox(vault: kind)
        let noVault = try sandbox.run(["credentials", "show"], env: ["TALLYFY_VAULT_PASSPHRASE": "x"])
        #expect(noVault.status == 66, "\(noVault.brief)")
        // A file vault is the default location; an etcd one is named in the hint.
        let hint = kind == .file ? "tallyfy-vault init" : "tallyfy-vault --vault \(sandbox.vaultLocation) init"
        #expect(noVault.stderr.contains(hint), "\(noVault.stderr)")
        try sandbox.initWithKeyFile()
        try sandbox.refused(["--key-file", sandbox.path("nope"), "credentials", "show"], status: 66)
    }

    @Test(arguments: VaultKind.allCases) func keyFileOrVaultReadableByOthersIsRefusedWithTheChmod(_ kind: VaultKind) throws {
        let sandbox = try sandboxWithCredentials(kind)
        chmod(sandbox.keyPath, 0o640)
        let key = try sandbox.refused(["credentials", "show"], status: 77)
        #expect(key.stderr.contains("chmod 600 \(sandbox.keyPath)"))
        chmod(sandbox.keyPath, 0o600)
        // File only: an etcd vault has no file mode (etcd's access control fences it).
        guard kind == .file else { return }
        chmod(sandbox.vaultPath, 0o644)
        let vault = try sandbox.refused(["credentials", "show"], status: 77)
        #expect(vault.stderr.contains("chmod 600 \(sandbox.vaultPath)"))
    }

    @Test(arguments: VaultKind.allCases) func truncatedOrFlippedVaultIsRefusedWithoutACrash(_ kind: VaultKind) throws {
        let sandbox = try sandboxWithCredentials(kind)
        let original = try sandbox.sealedVault()
        for cut in [0, 5, 20, original.count / 2, original.count - 1] {
            try sandbox.replaceSealedVault(with: original.prefix(cut))
            try sandbox.refused(["credentials", "show"], status: 65)
        }
        for position in [3, 12, 40, original.count / 2, original.count - 3] {
            var flipped = original
            flipped[position] ^= 0x01
            try sandbox.replaceSealedVault(with: flipped)
            let result = try sandbox.run(["credentials", "show"])
            #expect([65, 77].contains(result.status), "flip at \(position): \(result.brief)")
            #expect(result.stderr.hasPrefix("tallyfy-vault: "))
        }
    }

    @Test(arguments: VaultKind.allCases) func noUnlockSourceAndNoTerminalFailsAtOnce(_ kind: VaultKind) throws {
        let sandbox = try sandboxWithCredentials(kind)
        var environment = sandbox.environment
        environment["TALLYFY_VAULT_KEY_FILE"] = nil
        let result = try runProcess(BuildProducts.vault, ["credentials", "show"], environment: environment)
        #expect(result.status == 78, "\(result.brief)")
        #expect(result.stderr.contains("no terminal"))
    }

    @Test(arguments: VaultKind.allCases) func aKeyFileVaultGainsAPassphraseSlotAndOpensWithEither(_ kind: VaultKind) throws {
        let sandbox = try sandboxWithCredentials(kind)
        let passphrase = try sandbox.write("ops passphrase\n", to: "ops-pass")
        try sandbox.ok(["keys", "add", "--new-passphrase-file", passphrase, "--label", "ops"])
        let list = try sandbox.ok(["keys", "list"])
        #expect(list.stdout.contains("key-file") && list.stdout.contains("ops"))
        var environment = sandbox.environment
        environment["TALLYFY_VAULT_KEY_FILE"] = nil
        let byPassphrase = try runProcess(BuildProducts.vault, ["--passphrase-file", passphrase, "credentials", "show"], environment: environment)
        #expect(byPassphrase.status == 0, "\(byPassphrase.brief)")
        try sandbox.ok(["credentials", "show"])
        // Removing the key-file slot leaves the passphrase; the last slot can't go.
        try sandbox.ok(["keys", "remove", "key-file"])
        try sandbox.refused(["credentials", "show"], status: 77)
        let last = try sandbox.refused(["--passphrase-file", passphrase, "keys", "remove", "ops"], status: 64)
        #expect(last.stderr.contains("only key slot"))
    }

    @Test(arguments: VaultKind.allCases) func rekeyKeepsTheContent(_ kind: VaultKind) throws {
        let sandbox = try sandboxWithCredentials(kind)
        let before = try sandbox.ok(["credentials", "show"]).stdout
        let oldBytes = try sandbox.vaultBytes()
        try sandbox.ok(["rekey"])
        #expect(try sandbox.vaultBytes() != oldBytes)
        #expect(try sandbox.ok(["credentials", "show"]).stdout == before)
    }

    @Test(arguments: VaultKind.allCases) func rekeyRefusesToDropSlotsItCannotRewrap(_ kind: VaultKind) throws {
        let sandbox = try sandboxWithCredentials(kind)
        try sandbox.ok(["keygen", sandbox.path("second")])
        try sandbox.ok(["keys", "add", "--new-key-file", sandbox.path("second"), "--label", "second"])
        let result = try sandbox.refused(["rekey"], status: 64)
        #expect(result.stderr.contains("--drop-other-slots"))
        try sandbox.ok(["rekey", "--drop-other-slots"])
        #expect(!(try sandbox.ok(["keys", "list"]).stdout.contains("second")))
    }

    @Test(arguments: VaultKind.allCases) func profilesAreSeparate(_ kind: VaultKind) throws {
        let sandbox = try sandboxWithCredentials(kind)
        try sandbox.ok(["--profile", "staging", "credentials", "set", "--org", "org-2", "--client-id", "client-2", "--secret-stdin",
            "--token-url", "http://127.0.0.1:9/oauth/token", "--api-url", "http://127.0.0.1:9/api"], stdin: "other-secret")
        #expect(try sandbox.ok(["--profile", "staging", "credentials", "show"]).stdout.contains("client-2"))
        #expect(try sandbox.ok(["credentials", "show"]).stdout.contains("client-abc"))
        let status = try sandbox.ok(["status"]).stdout
        #expect(status.contains("staging") && status.contains("default"))
    }

    @Test(arguments: VaultKind.allCases) func badCredentialsInputIsRefusedBeforeAnythingChanges(_ kind: VaultKind) throws {
        let sandbox = try sandboxWithCredentials(kind)
        try sandbox.refused(["credentials", "set", "--org", "org 1", "--client-id", "c", "--secret-stdin"], status: 64, stdin: "s")
        try sandbox.refused(["credentials", "set", "--org", "o", "--client-id", "c", "--secret-stdin",
            "--token-url", "http://tallyfy.example.com/oauth/token"], status: 64, stdin: "s")
        try sandbox.refused(["credentials", "set", "--org", "o", "--client-id", "c", "--secret-stdin"], status: 64, stdin: "")
        try sandbox.refused(["--profile", "bad name", "credentials", "set", "--org", "o", "--client-id", "c", "--secret-stdin"], status: 64, stdin: "s")
    }

    @Test(arguments: VaultKind.allCases) func statusAndKeysListNeedNoKey(_ kind: VaultKind) throws {
        let sandbox = try sandboxWithCredentials(kind)
        var environment = sandbox.environment
        environment["TALLYFY_VAULT_KEY_FILE"] = nil
        let status = try runProcess(BuildProducts.vault, ["status", "--format", "json"], environment: environment)
        #expect(status.status == 0, "\(status.brief)")
        let json = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
        #expect((json?["profiles"] as? [[String: Any]])?.first?["name"] as? String == "default")
        #expect(!status.stdout.contains(secret))
        let keys = try runProcess(BuildProducts.vault, ["keys", "list"], environment: environment)
        #expect(keys.status == 0)
    }
}

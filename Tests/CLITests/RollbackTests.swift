import Foundation
import Testing

/// A vault put back from before a change is refused on a machine that saw
/// the change: the generation sealed in the vault went down.
@Suite struct RollbackTests {
    let old = "cs-old-\(UUID().uuidString)"
    let new = "cs-new-\(UUID().uuidString)"

    /// What a copy of the vault is, and how to put it back: the file's bytes,
    /// or every key under the etcd prefix, written back as `etcdctl` would.
    private func snapshot(_ sandbox: Sandbox) throws -> () throws -> Void {
        if let keys = sandbox.etcdKeys {
            let saved = try keys.all()
            return { for (key, value) in saved { try keys.put(key, value) } }
        }
        let bytes = try Data(contentsOf: URL(fileURLWithPath: sandbox.vaultPath))
        return { try bytes.write(to: URL(fileURLWithPath: sandbox.vaultPath)) }
    }

    @Test(arguments: VaultKind.allCases) func anOlderVaultPutBackIsRefusedUntilAccepted(_ vault: VaultKind) async throws {
        let world = try await LoggedIn.start(secrets: [old, new], vault: vault)
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let putBack = try snapshot(sandbox)
        try sandbox.ok(["rotate-secret", "--secret-stdin"], stdin: new + "\n")
        try putBack()

        // Everything that reads the vault where it lives refuses it. (On etcd a
        // fresh token is served from this machine's cache, which still holds
        // the newer vault; anything that renews or writes reads the cluster.)
        var reading = [["login"], ["rekey"], ["token", "--min-ttl", "8d"], ["exec", "--min-ttl", "8d", "--", "true"]]
        if vault == .file { reading += [["exec", "--", "true"], ["token"], ["token", "--format", "helper"]] }
        for arguments in reading {
            let refused = try sandbox.refused(arguments, status: 65)
            #expect(refused.stderr.contains("is older than one this machine has already seen (generation "), "\(refused.brief)")
            #expect(refused.stderr.contains("rolled back or restored from a backup"), "\(refused.brief)")
            #expect(refused.stderr.contains("--accept-rollback"), "\(refused.brief)")
        }
        // A machine that never saw the newer vault can't tell.
        let elsewhere = try sandbox.run(["exec", "--", "true"], env: ["XDG_STATE_HOME": sandbox.path("other-machine-state")])
        #expect(elsewhere.status == 0, "\(elsewhere.brief)")

        // Accepted once, on purpose, with one warning; then remembered (and
        // the old secret is what this vault holds again).
        let accepted = try sandbox.run(["--accept-rollback", "login"])
        #expect(accepted.status == 0, "\(accepted.brief)")
        #expect(accepted.stderr.hasPrefix("tallyfy-vault: warning: accepted an older vault at "), "\(accepted.brief)")
        let after = try sandbox.ok(["exec", "--min-ttl", "8d", "--", "true"])
        #expect(!after.stderr.contains("older vault"), "\(after.brief)")
    }

    /// A key slot removed (a lost laptop's key), then the old vault written
    /// back: the removed key must not open it again on this machine.
    @Test func aRemovedKeySlotDoesNotComeBackWithAnOldCopy() async throws {
        let world = try await LoggedIn.start(secrets: [old])
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let laptopKey = sandbox.path("laptop.key")
        try sandbox.ok(["keygen", laptopKey])
        try sandbox.ok(["keys", "add", "--new-key-file", laptopKey, "--label", "laptop"])
        let putBack = try snapshot(sandbox)
        try sandbox.ok(["keys", "remove", "laptop"])
        try sandbox.ok(["rekey"])
        try putBack()
        try sandbox.refused(["exec", "--", "true"], status: 65, env: ["TALLYFY_VAULT_KEY_FILE": laptopKey])
        let another = sandbox.path("another.key")
        try sandbox.ok(["keygen", another])
        try sandbox.refused(["keys", "add", "--new-key-file", another], status: 65)
    }

    /// `status` and `doctor` show the vault's generation and the one this
    /// machine remembers, without a key; doctor fails on an older vault.
    @Test func statusAndDoctorShowTheGenerationAndTheRememberedOne() async throws {
        let world = try await LoggedIn.start(secrets: [old, new])
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let putBack = try snapshot(sandbox)
        let before = try sandbox.ok(["status"]).stdout
        let generation = try #require(before.split(separator: "\n").first { $0.hasPrefix("generation: ") }, "\(before)")
        let number = try #require(Int(generation.dropFirst("generation: ".count).prefix { $0.isNumber }))
        #expect(generation == "generation: \(number) (this machine has seen \(number))")
        try sandbox.ok(["rotate-secret", "--secret-stdin"], stdin: new + "\n")
        #expect(try sandbox.ok(["status"]).stdout.contains("generation: \(number + 1) (this machine has seen \(number + 1))"))
        let json = try sandbox.ok(["status", "--format", "json"]).stdout
        #expect(json.contains("\"generation\":\(number + 1)") && json.contains("\"rememberedGeneration\":\(number + 1)"), "\(json)")
        let fine = try sandbox.run(["doctor"])
        #expect(fine.stdout.contains("generation") && fine.stdout.contains("\(number + 1) (this machine has seen \(number + 1))"), "\(fine.stdout)")

        try putBack()
        let bytes = try sandbox.vaultBytes()
        let status = try sandbox.ok(["status"], env: ["TALLYFY_VAULT_KEY_FILE": ""])
        #expect(status.stdout.contains("generation: \(number) (this machine has seen \(number + 1))"), "\(status.stdout)")
        let doctor = try sandbox.run(["doctor"])
        #expect(doctor.status == 2, "\(doctor.brief)")
        #expect(doctor.stdout.contains("\(number), older than \(number + 1), which this machine has seen"), "\(doctor.stdout)")
        #expect(try sandbox.vaultBytes() == bytes, "status or doctor changed the vault")
    }
}

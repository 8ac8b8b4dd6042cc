import Foundation
import Testing

/// A private SoftHSM2 for one test: its own configuration and token folder
/// inside the sandbox (`SOFTHSM2_CONF`), tokens made with `softhsm2-util`
/// and RSA key pairs with OpenSC's `pkcs11-tool`, both installed by
/// tools/test. When the module or the tools are missing the test fails:
/// a PKCS#11 test that can't run must not pass.
struct SoftHSM {
    static let modules = ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"]
    let module: String
    let environment: [String: String]

    init(in sandbox: Sandbox) throws {
        module = try #require(Self.modules.first { FileManager.default.fileExists(atPath: $0) },
            "SoftHSM2 is not installed (tools/test installs softhsm2 and opensc)")
        let folder = sandbox.path("softhsm")
        try FileManager.default.createDirectory(atPath: folder + "/tokens", withIntermediateDirectories: true)
        let conf = folder + "/softhsm2.conf"
        try "directories.tokendir = \(folder)/tokens\nobjectstore.backend = file\nlog.level = ERROR\n".write(toFile: conf, atomically: true, encoding: .utf8)
        environment = ["SOFTHSM2_CONF": conf, "TALLYFY_VAULT_PKCS11_MODULE": module]
    }

    /// Runs one of the token tools and requires success.
    @discardableResult
    func tool(_ name: String, _ arguments: [String]) throws -> RunResult {
        let path = try #require(["/usr/bin/", "/usr/local/bin/"].map { $0 + name }.first { FileManager.default.isExecutableFile(atPath: $0) },
            "\(name) is not installed (tools/test installs softhsm2 and opensc)")
        let result = try runProcess(URL(fileURLWithPath: path), arguments,
            environment: environment.merging(["PATH": "/usr/bin:/bin"]) { $1 })
        #expect(result.status == 0, "\(name) \(arguments.first ?? ""): \(result.brief)")
        return result
    }

    /// A new token holding one RSA-2048 key pair made for decryption. These
    /// PINs are throwaway fixtures of a token that lives for one test.
    func makeToken(_ label: String, pin: String, keyID: String = "01", keyLabel: String = "vault-key") throws {
        try tool("softhsm2-util", ["--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "so-\(pin)"])
        try tool("pkcs11-tool", ["--module", module, "--token-label", label, "--login", "--pin", pin,
            "--keypairgen", "--key-type", "rsa:2048", "--id", keyID, "--label", keyLabel, "--usage-decrypt"])
    }

    func deleteToken(_ label: String) throws {
        try tool("softhsm2-util", ["--delete-token", "--token", label])
    }
}

@Suite struct Pkcs11Tests {
    let pin = "pin-\(UUID().uuidString.prefix(8))"
    let uri = "pkcs11:token=ops;object=vault-key"

    /// A logged-in key-file vault and a token with a key pair; `unlock` is
    /// the environment that opens the vault through the token alone.
    func world() async throws -> (LoggedIn, SoftHSM, unlock: [String: String]) {
        let world = try await LoggedIn.start()
        let hsm = try SoftHSM(in: world.sandbox)
        try hsm.makeToken("ops", pin: pin)
        world.sandbox.environment.merge(hsm.environment) { $1 }
        let pinFile = try world.sandbox.write(pin + "\n", to: "pin")
        world.sandbox.environment["TALLYFY_VAULT_PKCS11_PIN_FILE"] = pinFile
        return (world, hsm, ["TALLYFY_VAULT_PKCS11_URI": uri])
    }

    /// Init with a key file, add the token's slot, remove the key file's
    /// slot: from then on only the token opens the vault, for every way in.
    @Test func aVaultWhoseOnlySlotIsOnTheTokenWorksEndToEnd() async throws {
        let (world, _, unlock) = try await world()
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let added = try sandbox.ok(["keys", "add", "--pkcs11", uri, "--label", "hsm"])
        #expect(added.stderr.contains("added key slot \"hsm\""), "\(added.brief)")
        try sandbox.ok(["keys", "remove", "key-file"])
        sandbox.environment["TALLYFY_VAULT_KEY_FILE"] = nil
        let bytes = try sandbox.vaultBytes()
        // Format version 2 (little-endian u16 after the magic): an older release says so instead of "damaged".
        #expect(bytes[8] == 2 && bytes[9] == 0)

        let list = try sandbox.ok(["keys", "list"])
        let row = try #require(list.stdout.split(separator: "\n").first { $0.hasPrefix("hsm") }, "\(list.stdout)")
        #expect(row.contains("pkcs11") && row.contains("token \"ops\"") && row.contains("key id 01"), "\(list.stdout)")
        #expect(!list.stdout.contains("key-file"))

        // The key file no longer opens it; the token does, for exec (the
        // launcher's fast path), the global option, login, status, doctor.
        try sandbox.refused(["exec", "--", "true"], status: 78)
        try sandbox.ok(["exec", "--", "true"], env: unlock)
        let printed = try sandbox.ok(["exec", "--", "/bin/sh", "-c", "test -n \"$TALLYFY_TOKEN\" && echo has-token"], env: unlock)
        #expect(printed.stdout == "has-token\n")
        try sandbox.ok(["--pkcs11", uri, "exec", "--", "true"])
        try sandbox.ok(["login"], env: unlock)
        let status = try sandbox.ok(["status"])
        #expect(status.stdout.contains("hsm (pkcs11 on token \"ops\")"), "\(status.stdout)")
        let doctor = try sandbox.run(["doctor", "--format", "json"], env: unlock)
        #expect(doctor.stdout.contains("\"pkcs11 token\"") && doctor.stdout.contains("token \\\"ops\\\""), "\(doctor.stdout)")
        #expect(doctor.stdout.contains("PKCS#11 token \(uri) opens the vault"), "\(doctor.stdout)")

        // rekey re-wraps the new data key to the token; the slot still opens.
        try sandbox.ok(["rekey"], env: unlock)
        try sandbox.ok(["exec", "--", "true"], env: unlock)

        // The agent is unlocked through the token once, then serves clients
        // that have no unlock source at all.
        let runtime = sandbox.root.appendingPathComponent("run")
        try FileManager.default.createDirectory(at: runtime, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        sandbox.environment["XDG_RUNTIME_DIR"] = runtime.path
        let agent = try sandbox.launch(["agent"], env: unlock)
        defer { agent.kill(SIGTERM) }
        let ready = ProcView.waitUntil(seconds: 30) { (try? sandbox.run(["agent", "status"]))?.status == 0 || !agent.isRunning }
        #expect(ready && agent.isRunning, "the agent did not start: \(agent.isRunning ? "" : agent.wait().brief)")
        try sandbox.ok(["exec", "--", "true"], env: ["TALLYFY_VAULT_PKCS11_PIN_FILE": ""])
        #expect(!agent.stderrSoFar.contains(pin))
    }

    /// Every way the token can fail refuses with its own status and message,
    /// and leaves the vault byte for byte as it was.
    @Test func tokenFailuresAreRefusedClearlyAndChangeNothing() async throws {
        let (world, hsm, unlock) = try await world()
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        try sandbox.ok(["keys", "add", "--pkcs11", uri])
        try sandbox.ok(["keys", "remove", "key-file"])
        sandbox.environment["TALLYFY_VAULT_KEY_FILE"] = nil

        let wrongPin = try sandbox.write("not-the-pin\n", to: "wrong-pin")
        let wrong = try sandbox.refused(["exec", "--", "true"], status: 77, env: unlock.merging(["TALLYFY_VAULT_PKCS11_PIN_FILE": wrongPin]) { $1 })
        #expect(wrong.stderr.contains("wrong PIN for the PKCS#11 token of \(uri)"), "\(wrong.brief)")
        #expect(!wrong.stderr.contains("not-the-pin"))

        let missing = try sandbox.refused(["exec", "--", "true"], status: 78,
            env: unlock.merging(["TALLYFY_VAULT_PKCS11_MODULE": "/nonexistent/libnothing.so"]) { $1 })
        #expect(missing.stderr.contains("the PKCS#11 module /nonexistent/libnothing.so could not be loaded"), "\(missing.brief)")

        let noKey = try sandbox.refused(["login"], status: 66, env: ["TALLYFY_VAULT_PKCS11_URI": "pkcs11:token=ops;object=no-such-key"])
        #expect(noKey.stderr.contains("holds no key matching pkcs11:token=ops;object=no-such-key"), "\(noKey.brief)")

        let inArgv = try sandbox.refused(["--pkcs11", uri + "?pin-value=1234", "exec", "--", "true"], status: 64)
        #expect(inArgv.stderr.contains("a PIN is never taken from the command line"), "\(inArgv.brief)")

        // A second token with a key pair of its own can't open the vault.
        try hsm.makeToken("other", pin: pin)
        let other = try sandbox.refused(["exec", "--", "true"], status: 77, env: ["TALLYFY_VAULT_PKCS11_URI": "pkcs11:token=other;object=vault-key"])
        #expect(other.stderr.contains("opens none of the vault's key slots"), "\(other.brief)")

        // The token deleted (unplugged): named in the message.
        try hsm.deleteToken("ops")
        let gone = try sandbox.refused(["exec", "--", "true"], status: 66, env: unlock)
        #expect(gone.stderr.contains("no token matching \(uri) is present"), "\(gone.brief)")
        try sandbox.refused(["login"], status: 66, env: unlock)
    }

    /// SECURITY.md's "Token fields" followed by hand, with OpenSSL as the
    /// independent decoder: the key pair is made by OpenSSL and imported, the
    /// slot read out of the file byte by byte, and its ciphertext decrypted
    /// with `openssl pkeyutl` as RSA-OAEP with SHA-256 and MGF1-SHA-256.
    @Test func theSlotCiphertextIsStandardRSAOAEPWithSHA256() async throws {
        let (world, hsm, _) = try await world()
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let key = sandbox.path("imported.pem")
        let pub = sandbox.path("imported.pub.pem")
        let openssl = URL(fileURLWithPath: "/usr/bin/openssl")
        for arguments in [["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key],
                          ["pkey", "-in", key, "-pubout", "-out", pub]] {
            let made = try runProcess(openssl, arguments, environment: ["PATH": "/usr/bin:/bin"])
            #expect(made.status == 0, "openssl \(arguments[0]): \(made.brief)")
        }
        for (file, type) in [(key, "privkey"), (pub, "pubkey")] {
            try hsm.tool("pkcs11-tool", ["--module", hsm.module, "--token-label", "ops", "--login", "--pin", pin,
                "--write-object", file, "--type", type, "--id", "02", "--label", "imported", "--usage-decrypt"])
        }
        try sandbox.ok(["keys", "add", "--pkcs11", "pkcs11:token=ops;object=imported", "--label", "imported"])

        // Header: magic 8 | version u16 | header length u32 | slot count u8 | slots.
        let bytes = [UInt8](try sandbox.vaultBytes())
        #expect(Array(bytes[0..<8]) == Array("TFYVAULT".utf8) && bytes[8] == 2 && bytes[9] == 0)
        var at = 15
        var ciphertext: [UInt8]? = nil
        for _ in 0..<Int(bytes[14]) {
            let kind = bytes[at]
            let labelLength = Int(bytes[at + 1])
            let label = String(decoding: bytes[at + 2..<at + 2 + labelLength], as: UTF8.self)
            at += 2 + labelLength + 16  // kind, label length, label, salt
            if kind == 1 { at += 16 }  // Argon2id cost
            if kind == 3 {
                #expect(bytes[at] == 1, "mechanism")
                at += 1
                var fields: [[UInt8]] = []
                for _ in 0..<3 {
                    fields.append(Array(bytes[at + 1..<at + 1 + Int(bytes[at])]))
                    at += 1 + Int(bytes[at])
                }
                let length = Int(bytes[at]) | Int(bytes[at + 1]) << 8
                at += 2
                if label == "imported" {
                    #expect(String(decoding: fields[0], as: UTF8.self) == "ops")
                    #expect(fields[2] == [0x02])
                    ciphertext = Array(bytes[at..<at + length])
                }
                at += length
            }
            at += 24 + 48  // nonce, wrapped key
        }
        let sealed = try #require(ciphertext, "no slot labelled imported")
        #expect(sealed.count == 256)
        let input = sandbox.path("slot-ciphertext")
        try Data(sealed).write(to: URL(fileURLWithPath: input))
        let decrypted = try runProcess(openssl, ["pkeyutl", "-decrypt", "-inkey", key, "-in", input, "-out", sandbox.path("slot-key"),
            "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"],
            environment: ["PATH": "/usr/bin:/bin"])
        #expect(decrypted.status == 0, "openssl pkeyutl -decrypt: \(decrypted.brief)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: sandbox.path("slot-key"))).count == 32)
        // And the imported key opens the vault through the token.
        try sandbox.ok(["exec", "--", "true"], env: ["TALLYFY_VAULT_KEY_FILE": "", "TALLYFY_VAULT_PKCS11_URI": "pkcs11:token=ops;object=imported"])
    }
}

import CSodium
import Foundation
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

/// Runs every committed test vector of the vault format (SECURITY.md,
/// "File format, version 1") and checks its exact outcome, as age does with
/// its `testdata`: a vault that must open yields exactly the listed content,
/// a damaged one fails with the listed error kind, at the listed stage, with
/// the listed words in its message.
///
/// The files in `Vectors/` were written once with a known key and are never
/// regenerated: a change in the code that stops one from opening is a change
/// of the format, and needs a new format version, not new vectors.
@Suite struct VectorTests {
    // MARK: - The manifest

    struct Manifest: Decodable {
        var vectors: [Vector]
    }

    struct Vector: Decodable, CustomTestStringConvertible, Sendable {
        var name: String
        var file: String
        var description: String
        /// success, corrupt, refused or unsupported-version.
        var expect: String
        var keyFileHex: String?
        var passphrase: String?
        /// parse, open or records: where a failure must show.
        var stage: String?
        var messageContains: String?
        var content: ExpectedContent?

        var testDescription: String { name }
    }

    struct ExpectedContent: Decodable, Sendable {
        var profiles: [String: ExpectedProfile]
        var userTokens: [String: [ExpectedUserToken]]
        var slots: [ExpectedSlot]
        var summary: [String: ExpectedSummary]
    }

    struct ExpectedProfile: Decodable, Sendable {
        var orgID, clientID, clientSecret, tokenURL, apiURL: String
        var secretSetAt: Double
        var applicationToken: ExpectedToken?
    }

    struct ExpectedToken: Decodable, Sendable {
        var value: String
        var expiresAt: Double
        var obtainedAt: Double
    }

    struct ExpectedUserToken: Decodable, Sendable {
        var email, value: String
        var expiresAt: Double
    }

    struct ExpectedSlot: Decodable, Sendable {
        var label, kind: String
    }

    struct ExpectedSummary: Decodable, Sendable {
        var secretSetAt: Double
        var applicationTokenExpiresAt: Double?
        var userTokenCount: Int
        var earliestUserTokenExpiresAt: Double?
    }

    static let folder: URL = Bundle.module.url(forResource: "Vectors", withExtension: nil)!

    static let manifest: Manifest = {
        let data = try! Data(contentsOf: folder.appendingPathComponent("vectors.json"))
        return try! JSONDecoder().decode(Manifest.self, from: data)
    }()

    static var allVectors: [Vector] { manifest.vectors }

    static func bytes(of file: String) throws -> Data {
        try Data(contentsOf: folder.appendingPathComponent(file))
    }

    static func secret(for vector: Vector) throws -> UnlockSecret {
        if let hex = vector.keyFileHex {
            let key = try #require(hexBytes(hex))
            return UnlockSecret(kind: .keyFile, bytes: SecretBytes(copying: key), origin: "vector key file")
        }
        let passphrase = try #require(vector.passphrase, "vector \(vector.name) names neither a key file nor a passphrase")
        return UnlockSecret(kind: .passphrase, bytes: SecretBytes(copying: Array(passphrase.utf8)), origin: "vector passphrase")
    }

    static func hexBytes(_ hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else { return nil }
        return stride(from: 0, to: digits.count, by: 2).map {
            UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16)
        }.reduce(into: [UInt8]?([])) { result, byte in
            if let byte { result?.append(byte) } else { result = nil }
        }
    }

    // MARK: - Every vector

    @Test("each vector has its listed outcome", arguments: VectorTests.allVectors)
    func vectorHasItsOutcome(_ vector: Vector) throws {
        let data = try Self.bytes(of: vector.file)
        let secret = try Self.secret(for: vector)
        var stage = "parse"
        do {
            let parsed = try ParsedVault(parsing: data)
            stage = "open"
            let vault = try UnlockedVault.open(parsed, with: [secret])
            stage = "records"
            var userTokens: [String: [UserTokenRecord]] = [:]
            for profile in Set(vault.content.profiles.keys).union(vector.content.map { Array($0.userTokens.keys) } ?? []) {
                userTokens[profile] = try vault.userTokens(profile: profile)
            }
            guard vector.expect == "success", let expected = vector.content else {
                Issue.record("\(vector.name): expected \(vector.expect) at stage \(vector.stage ?? "?"), but the vault opened")
                return
            }
            check(vault, parsed: parsed, userTokens: userTokens, against: expected)
        } catch let error as VaultError {
            guard vector.expect != "success" else {
                Issue.record("\(vector.name): expected success, got \(error.kind) at stage \(stage): \(error)")
                return
            }
            let kind: VaultError.Kind = vector.expect == "refused" ? .refused : .corrupt
            #expect(["corrupt", "refused", "unsupported-version"].contains(vector.expect), "unknown expectation \(vector.expect)")
            #expect(error.kind == kind, "\(vector.name): \(error)")
            #expect(stage == vector.stage, "\(vector.name) failed at stage \(stage): \(error)")
            if let words = vector.messageContains {
                #expect(error.message.contains(words), "\(vector.name): \"\(error.message)\" lacks \"\(words)\"")
            }
            if vector.expect == "unsupported-version" {
                #expect(error.message.contains("is not supported"))
            }
            // A failure never quotes the secret it was given.
            #expect(!error.description.contains("correct horse"))
        }
    }

    private func check(
        _ vault: UnlockedVault, parsed: ParsedVault, userTokens: [String: [UserTokenRecord]], against expected: ExpectedContent
    ) {
        let content = vault.content
        #expect(Set(content.profiles.keys) == Set(expected.profiles.keys))
        for (name, want) in expected.profiles {
            guard let got = content.profiles[name] else { continue }
            #expect(got.orgID == want.orgID)
            #expect(got.clientID == want.clientID)
            #expect(got.clientSecret == want.clientSecret)
            #expect(got.tokenURL == want.tokenURL)
            #expect(got.apiURL == want.apiURL)
            #expect(got.secretSetAt.timeIntervalSince1970 == want.secretSetAt)
            #expect(got.applicationToken?.value == want.applicationToken?.value)
            #expect(got.applicationToken?.expiresAt.timeIntervalSince1970 == want.applicationToken?.expiresAt)
            #expect(got.applicationToken?.obtainedAt.timeIntervalSince1970 == want.applicationToken?.obtainedAt)
        }
        for (profile, want) in expected.userTokens {
            let got = userTokens[profile] ?? []
            #expect(got.map(\.email) == want.map(\.email), "user tokens of \(profile)")
            #expect(got.map(\.token.value) == want.map(\.value), "user tokens of \(profile)")
            #expect(got.map(\.token.expiresAt.timeIntervalSince1970) == want.map(\.expiresAt), "user tokens of \(profile)")
            #expect(got.allSatisfy { $0.profile == profile })
            #expect(vault.userTokenCount(profile: profile) == want.count)
            for token in want {
                // Lookups ignore the case of the email.
                let found = try? vault.userToken(profile: profile, email: token.email.uppercased())
                #expect(found?.token.value == token.value)
            }
        }
        #expect(vault.slotList.map(\.label) == expected.slots.map(\.label))
        #expect(vault.slotList.map(\.kind.name) == expected.slots.map(\.kind))

        // The clear summary, as a keyless `check` reads it, and as the opened
        // vault would write it again.
        for summary in [parsed.summary, vault.summary()] {
            #expect(Set(summary.profiles.keys) == Set(expected.summary.keys))
            for (name, want) in expected.summary {
                let got = summary.profiles[name]
                #expect(got?.secretSetAt.timeIntervalSince1970 == want.secretSetAt)
                #expect(got?.applicationTokenExpiresAt?.timeIntervalSince1970 == want.applicationTokenExpiresAt)
                #expect(got?.userTokenCount == want.userTokenCount)
                #expect(got?.earliestUserTokenExpiresAt?.timeIntervalSince1970 == want.earliestUserTokenExpiresAt)
            }
        }
    }

    /// Nothing in the folder escapes the manifest, and the manifest names no
    /// missing file, so a vector can't be dropped or added silently.
    @Test func everyVectorFileIsListed() throws {
        let listed = Set(Self.manifest.vectors.map(\.file))
        let present = Set(try FileManager.default.contentsOfDirectory(atPath: Self.folder.path)
            .filter { !$0.hasPrefix(".") && $0 != "vectors.json" })
        #expect(listed == present)
        #expect(Set(Self.manifest.vectors.map(\.name)).count == Self.manifest.vectors.count, "vector names are unique")
        for outcome in ["success", "corrupt", "refused", "unsupported-version"] {
            #expect(Self.manifest.vectors.contains { $0.expect == outcome }, "no vector expects \(outcome)")
        }
    }

    // MARK: - The documented layout, followed by hand

    struct LayoutCase: CustomTestStringConvertible, Sendable {
        var file: String
        /// The root's JSON exactly as the writer produced it.
        var rootJSON: String
        /// profile → (email as sealed, record JSON)
        var records: [(profile: String, email: String, json: String)]
        var testDescription: String { file }
    }

    static let layoutCases: [LayoutCase] = [
        LayoutCase(
            file: "cli.vault",
            rootJSON: #"{"profiles":{"default":{"apiURL":"http://127.0.0.1:9/api","clientID":"client-vector-1","clientSecret":"vector-secret-not-real","orgID":"org-vector-1","secretSetAt":1767225600,"tokenURL":"http://127.0.0.1:9/oauth/token"}}}"#,
            records: []),
        LayoutCase(
            file: "users.vault",
            rootJSON: #"{"profiles":{"default":{"apiURL":"http://127.0.0.1:9/api","applicationToken":{"expiresAt":1767830400,"obtainedAt":1767225600,"value":"vector-app-token-default"},"clientID":"client-vector-1","clientSecret":"vector-secret-not-real","orgID":"org-vector-1","secretSetAt":1767225600,"tokenURL":"http://127.0.0.1:9/oauth/token"},"staging":{"apiURL":"http://127.0.0.1:9/api","clientID":"client-vector-2","clientSecret":"vector-secret-2-not-real","orgID":"org-vector-2","secretSetAt":1764547200,"tokenURL":"http://127.0.0.1:9/oauth/token"}}}"#,
            records: [
                ("default", "Ann@Example.com", #"{"email":"Ann@Example.com","profile":"default","token":{"expiresAt":1775001600,"obtainedAt":1767225600,"value":"vector-user-token-ann"}}"#),
                ("default", "bob@example.com", #"{"email":"bob@example.com","profile":"default","token":{"expiresAt":1774915200,"obtainedAt":1767225600,"value":"vector-user-token-bob"}}"#),
                ("staging", "carol@example.org", #"{"email":"carol@example.org","profile":"staging","token":{"expiresAt":1775088000,"obtainedAt":1767225600,"value":"vector-user-token-carol"}}"#),
            ]),
    ]

    static let vectorKeyFile: [UInt8] = (0..<32).map { UInt8($0) }
    static let vectorPassphrase = Array("correct horse battery staple".utf8)

    /// Opens a vector vault following only SECURITY.md: its own byte walking
    /// and libsodium called directly, none of `ParsedVault`, `KeySlot` or
    /// `UnlockedVault`. If this test and the library disagree, one of them,
    /// or the document, is wrong.
    @Test("the documented layout parses the bytes", arguments: VectorTests.layoutCases)
    func documentedLayoutParsesTheBytes(_ layout: LayoutCase) throws {
        #expect(sodium_init() >= 0)
        let file = Array(try Self.bytes(of: layout.file))
        var walk = Walk(file)

        // Header.
        #expect(try walk.take(8) == Array("TFYVAULT".utf8))
        #expect(try walk.u16() == 1)
        let headerLength = Int(try walk.u32())
        let slotCount = Int(try walk.u8())
        #expect((1...32).contains(slotCount))

        struct Slot { var kind: UInt8; var label: String; var salt: [UInt8]; var ops: UInt64; var mem: UInt64; var nonce: [UInt8]; var wrapped: [UInt8] }
        var slots: [Slot] = []
        for _ in 0..<slotCount {
            let kind = try walk.u8()
            let label = String(decoding: try walk.take(Int(try walk.u8())), as: UTF8.self)
            let salt = try walk.take(16)
            var ops: UInt64 = 0
            var mem: UInt64 = 0
            if kind == 1 {
                ops = try walk.u64()
                mem = try walk.u64()
                #expect((1...16).contains(ops) && (8192...(1 << 30)).contains(mem))
            } else {
                #expect(kind == 2)
            }
            slots.append(Slot(kind: kind, label: label, salt: salt, ops: ops, mem: mem, nonce: try walk.take(24), wrapped: try walk.take(48)))
        }
        #expect(slots.map(\.label) == ["key-file", "passphrase"])
        let summaryLength = Int(try walk.u32())
        let summary = try walk.take(summaryLength)
        #expect(walk.offset == headerLength, "header length counts from the magic to the end of the summary")
        let header = Array(file[0..<headerLength])
        let summaryObject = try JSONSerialization.jsonObject(with: Data(summary)) as? [String: Any]
        #expect(summaryObject?["profiles"] is [String: Any])

        // Index.
        let indexStart = walk.offset
        let recordCount = Int(try walk.u32())
        #expect(recordCount == layout.records.count)
        struct Entry { var locator: [UInt8]; var profileTag: [UInt8]; var expiresAt: Int64; var sealedLength: Int; var tag: [UInt8] }
        var entries: [Entry] = []
        for _ in 0..<recordCount {
            entries.append(Entry(
                locator: try walk.take(16), profileTag: try walk.take(8), expiresAt: Int64(bitPattern: try walk.u64()),
                sealedLength: Int(try walk.u32()), tag: try walk.take(16)))
        }
        let index = Array(file[indexStart..<walk.offset])

        // Root.
        let rootNonce = try walk.take(24)
        let root = try walk.take(Int(try walk.u32()))
        let records = try entries.map { entry in (nonce: try walk.take(24), sealed: try walk.take(entry.sealedLength)) }
        #expect(walk.offset == file.count, "nothing follows the last record")

        // The key-file slot: BLAKE2b-256 keyed with the key file over
        // "TFYVAULT-keyfile-v1" ‖ salt, then XChaCha20-Poly1305 with
        // AD "TFYVAULT-slot-v1" ‖ kind ‖ salt.
        let keyFileSlot = try #require(slots.first { $0.kind == 2 })
        let slotKey = Self.blake2b(32, key: Self.vectorKeyFile, message: Array("TFYVAULT-keyfile-v1".utf8) + keyFileSlot.salt)
        let slotAD = Array("TFYVAULT-slot-v1".utf8) + [2] + keyFileSlot.salt
        let dataKey = try #require(Self.aeadOpen(keyFileSlot.wrapped, key: slotKey, nonce: keyFileSlot.nonce, ad: slotAD))
        #expect(dataKey.count == 32)

        // The passphrase slot: Argon2id13 with the stored cost, same wrap.
        let passphraseSlot = try #require(slots.first { $0.kind == 1 })
        var passphraseKey = [UInt8](repeating: 0, count: 32)
        let rc = crypto_pwhash(
            &passphraseKey, 32, Self.vectorPassphrase.map { CChar(bitPattern: $0) }, UInt64(Self.vectorPassphrase.count),
            passphraseSlot.salt, passphraseSlot.ops, Int(passphraseSlot.mem), crypto_pwhash_ALG_ARGON2ID13)
        #expect(rc == 0)
        let passphraseAD = Array("TFYVAULT-slot-v1".utf8) + [1] + passphraseSlot.salt
        let sameKey = Self.aeadOpen(passphraseSlot.wrapped, key: passphraseKey, nonce: passphraseSlot.nonce, ad: passphraseAD)
        #expect(sameKey == dataKey, "both slots wrap the same data key")

        // The root: AD = header ‖ index, then sodium_unpad with block 256.
        let paddedRoot = try #require(Self.aeadOpen(root, key: dataKey, nonce: rootNonce, ad: header + index))
        #expect(paddedRoot.count % 256 == 0)
        #expect(String(decoding: try Self.unpad(paddedRoot), as: UTF8.self) == layout.rootJSON)

        // The index key, locators, profile tags and records.
        let indexKey = Self.blake2b(32, key: dataKey, message: Array("TFYVAULT-index-key-v1".utf8))
        for (position, expected) in layout.records.enumerated() {
            let entry = entries[position]
            let locator = Self.blake2b(16, key: indexKey, message: Array("user\0\(expected.profile)\0\(expected.email.lowercased())".utf8))
            let profileTag = Self.blake2b(8, key: indexKey, message: Array("profile\0\(expected.profile)".utf8))
            #expect(entry.locator == locator, "record \(position): locator")
            #expect(entry.profileTag == profileTag, "record \(position): profile tag")
            let (nonce, sealed) = records[position]
            #expect(Array(sealed.suffix(16)) == entry.tag, "the index pins the record's tag")
            #expect(sealed.count % 256 == 16, "records are padded to 256-byte blocks")
            let padded = try #require(Self.aeadOpen(sealed, key: dataKey, nonce: nonce, ad: Array("TFYVAULT-record-v1".utf8) + locator))
            let json = try Self.unpad(padded)
            #expect(String(decoding: json, as: UTF8.self) == expected.json)
            let object = try JSONSerialization.jsonObject(with: Data(json)) as? [String: Any]
            let token = object?["token"] as? [String: Any]
            #expect((token?["expiresAt"] as? NSNumber)?.int64Value == entry.expiresAt, "the index repeats the expiry in the clear")
        }
    }

    // MARK: - libsodium, called directly

    static func blake2b(_ length: Int, key: [UInt8], message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length)
        let rc = crypto_generichash(&out, length, message, UInt64(message.count), key, key.count)
        precondition(rc == 0)
        return out
    }

    static func aeadOpen(_ sealed: [UInt8], key: [UInt8], nonce: [UInt8], ad: [UInt8]) -> [UInt8]? {
        guard sealed.count >= 16 else { return nil }
        var plain = [UInt8](repeating: 0, count: sealed.count - 16)
        var length: UInt64 = 0
        let rc = crypto_aead_xchacha20poly1305_ietf_decrypt(
            &plain, &length, nil, sealed, UInt64(sealed.count), ad, UInt64(ad.count), nonce, key)
        return rc == 0 ? Array(plain.prefix(Int(length))) : nil
    }

    static func unpad(_ padded: [UInt8]) throws -> [UInt8] {
        try #require(!padded.isEmpty && padded.count % 256 == 0, "a padded body is a whole number of 256-byte blocks")
        var length = 0
        let rc = padded.withUnsafeBufferPointer { sodium_unpad(&length, $0.baseAddress!, $0.count, 256) }
        try #require(rc == 0, "sodium_unpad rejected the padding")
        return Array(padded.prefix(length))
    }

    /// Little-endian reads from the front of the file, written here rather
    /// than borrowed from `ByteReader`.
    struct Walk {
        let bytes: [UInt8]
        var offset = 0
        init(_ bytes: [UInt8]) { self.bytes = bytes }

        mutating func take(_ count: Int) throws -> [UInt8] {
            try #require(count >= 0 && offset + count <= bytes.count, "the file ends at \(bytes.count), wanted \(count) bytes at \(offset)")
            defer { offset += count }
            return Array(bytes[offset..<offset + count])
        }

        mutating func u8() throws -> UInt8 { try take(1)[0] }
        mutating func u16() throws -> UInt16 { UInt16(try little(2)) }
        mutating func u32() throws -> UInt32 { UInt32(try little(4)) }
        mutating func u64() throws -> UInt64 { try little(8) }

        private mutating func little(_ width: Int) throws -> UInt64 {
            try take(width).reversed().reduce(0) { ($0 << 8) | UInt64($1) }
        }
    }
}

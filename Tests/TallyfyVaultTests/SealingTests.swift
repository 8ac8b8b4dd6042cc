import Foundation
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

@Suite struct SealingTests {
    private func reopen(_ vault: UnlockedVault, with secrets: [UnlockSecret]) throws -> UnlockedVault {
        try UnlockedVault.open(try ParsedVault(parsing: try vault.sealed()), with: secrets)
    }

    @Test func roundTripKeepsContentAndUserTokens() throws {
        let key = TestKeys.keyFile(7)
        let vault = try UnlockedVault.create(secret: key, label: "key-file", kdf: .moderate)
        vault.content.profiles["default"] = TestKeys.profile(appToken: TestKeys.token("app-token"))
        try vault.setUserToken(UserTokenRecord(profile: "default", email: "Ann@Example.com", token: TestKeys.token("user-token")))
        let reopened = try reopen(vault, with: [key])
        #expect(reopened.content == vault.content)
        #expect(try reopened.userToken(profile: "default", email: "ann@example.COM")?.token.value == "user-token")
        #expect(try reopened.userToken(profile: "other", email: "ann@example.com") == nil)
        #expect(reopened.summary().profiles["default"]?.userTokenCount == 1)
    }

    @Test func everyWriteUsesAFreshNonce() throws {
        let key = TestKeys.keyFile(1)
        let vault = try UnlockedVault.create(secret: key, label: "k", kdf: .moderate)
        #expect(try vault.sealed() != vault.sealed())
    }

    @Test func wrongKeyIsRefusedAndWrongKindExplained() throws {
        let vault = try UnlockedVault.create(secret: TestKeys.keyFile(1), label: "k", kdf: .moderate)
        let parsed = try ParsedVault(parsing: try vault.sealed())
        #expect(throws: VaultError.self) { try UnlockedVault.open(parsed, with: [TestKeys.keyFile(2)]) }
        do {
            _ = try UnlockedVault.open(parsed, with: [TestKeys.passphrase("nope")])
            Issue.record("a passphrase opened a key-file-only vault")
        } catch let error as VaultError {
            #expect(error.kind == .refused)
            #expect(error.message.contains("no passphrase slot"))
        }
    }

    @Test func keyFileVaultGainsAPassphraseSlotAndOpensWithEither() throws {
        let key = TestKeys.keyFile(3)
        let passphrase = TestKeys.passphrase("correct horse")
        let vault = try UnlockedVault.create(secret: key, label: "key-file", kdf: .moderate)
        vault.content.profiles["p"] = TestKeys.profile()
        try vault.addSlot(secret: passphrase, label: "ops", kdf: .interactive)
        let bytes = try vault.sealed()
        #expect(try UnlockedVault.open(ParsedVault(parsing: bytes), with: [key]).content == vault.content)
        #expect(try UnlockedVault.open(ParsedVault(parsing: bytes), with: [passphrase]).content == vault.content)
        #expect(throws: VaultError.self) { try UnlockedVault.open(ParsedVault(parsing: bytes), with: [TestKeys.passphrase("wrong")]) }
    }

    @Test func lastSlotCannotBeRemoved() throws {
        let vault = try UnlockedVault.create(secret: TestKeys.keyFile(1), label: "only", kdf: .moderate)
        #expect(throws: VaultError.self) { try vault.removeSlot(label: "only") }
        #expect(throws: VaultError.self) { try vault.removeSlot(label: "missing") }
    }

    @Test func rekeyKeepsContentAndOldKeyNoLongerOpensNewFile() throws {
        let key = TestKeys.keyFile(4)
        let vault = try UnlockedVault.create(secret: key, label: "key-file", kdf: .moderate)
        vault.content.profiles["default"] = TestKeys.profile()
        try vault.setUserToken(UserTokenRecord(profile: "default", email: "a@b.io", token: TestKeys.token("u1")))
        let before = try ParsedVault(parsing: try vault.sealed())
        let oldSlot = before.slots[0]
        try vault.rekey(secrets: [key], dropOthers: false)
        let after = try ParsedVault(parsing: try vault.sealed())
        let reopened = try UnlockedVault.open(after, with: [key])
        #expect(reopened.content == vault.content)
        #expect(try reopened.userToken(profile: "default", email: "a@b.io")?.token.value == "u1")
        // The old data key (what the old slot unwraps) does not open the new body.
        guard let oldKey = try oldSlot.unwrap(with: key) else {
            Issue.record("the old slot no longer unwraps with its own key")
            return
        }
        var ad = Data(after.headerBytes)
        ad.append(after.indexBytes)
        let opensWithOldKey = Sodium.open(after.rootSealed, key: oldKey, nonce: after.rootNonce, associatedData: ad) != nil
        #expect(!opensWithOldKey)
    }

    /// A listing and a rekey open every record in one reused buffer: a short
    /// record after a long one must still read only its own bytes.
    @Test func recordsOfEverySizeSurviveAListingAndARekey() throws {
        let key = TestKeys.keyFile(7)
        let vault = try UnlockedVault.create(secret: key, label: "key-file", kdf: .moderate)
        vault.content.profiles["default"] = TestKeys.profile()
        let values = [10, 3_000, 5, 600, 1, 2_000].enumerated().map { "v\($0.offset)-" + String(repeating: "x", count: $0.element) }
        try vault.setUserTokens(values.enumerated().map {
            UserTokenRecord(profile: "default", email: "u\($0.offset)@b.io", token: TestKeys.token($0.element))
        })
        #expect(try vault.userTokens(profile: "default").map(\.token.value) == values)
        try vault.rekey(secrets: [key], dropOthers: false)
        let reopened = try UnlockedVault.open(try ParsedVault(parsing: try vault.sealed()), with: [key])
        #expect(try reopened.userTokens(profile: "default").map(\.token.value) == values)
        #expect(try reopened.userToken(profile: "default", email: "U4@b.io")?.token.value == values[4])
    }

    @Test func rekeyRefusesSlotsItCannotRewrapUnlessTold() throws {
        let key = TestKeys.keyFile(5)
        let vault = try UnlockedVault.create(secret: key, label: "key-file", kdf: .moderate)
        try vault.addSlot(secret: TestKeys.keyFile(6), label: "other", kdf: .moderate)
        #expect(throws: VaultError.self) { try vault.rekey(secrets: [key], dropOthers: false) }
        try vault.rekey(secrets: [key], dropOthers: true)
        #expect(vault.slotList.map(\.label) == ["key-file"])
    }

    @Test func everyFlippedBitIsDetected() throws {
        let key = TestKeys.keyFile(8)
        let vault = try UnlockedVault.create(secret: key, label: "key-file", kdf: .moderate)
        vault.content.profiles["default"] = TestKeys.profile(appToken: TestKeys.token("t"))
        try vault.setUserToken(UserTokenRecord(profile: "default", email: "x@y.io", token: TestKeys.token("u")))
        let bytes = try vault.sealed()
        for position in stride(from: 0, to: bytes.count, by: 7) {
            var damaged = bytes
            damaged[position] ^= 0x10
            let outcome: Result<Void, any Error> = Result {
                let opened = try UnlockedVault.open(try ParsedVault(parsing: damaged), with: [key])
                _ = try opened.userTokens(profile: "default")
            }
            guard case .failure(let error) = outcome, let vaultError = error as? VaultError else {
                Issue.record("a flipped bit at \(position) went unnoticed")
                continue
            }
            #expect([.corrupt, .refused].contains(vaultError.kind), "bit at \(position): \(vaultError.message)")
        }
    }

    @Test func everyTruncationIsCorrupt() throws {
        let vault = try UnlockedVault.create(secret: TestKeys.keyFile(9), label: "k", kdf: .moderate)
        let bytes = try vault.sealed()
        for length in [0, 1, 8, 13, 40, bytes.count / 2, bytes.count - 1] {
            #expect(throws: VaultError.self) { try ParsedVault(parsing: bytes.prefix(length)) }
        }
    }

    @Test func hostileArgon2CostIsRefusedBeforeAnyAllocation() throws {
        let vault = try UnlockedVault.create(secret: TestKeys.passphrase("pw"), label: "pw", kdf: .interactive)
        var bytes = try vault.sealed()
        // Slot layout: header 15 bytes, kind 1, label length 1, "pw" 2, salt 16, opsLimit 8, memLimit 8.
        let memLimitOffset = 15 + 1 + 1 + 2 + 16 + 8
        for i in 0..<8 { bytes[memLimitOffset + i] = 0xFF }
        do {
            _ = try ParsedVault(parsing: bytes)
            Issue.record("a 16 EiB memory limit was accepted")
        } catch let error as VaultError {
            #expect(error.kind == .corrupt)
        }
    }

    @Test func swappedUserRecordsAreDetected() throws {
        let key = TestKeys.keyFile(10)
        let vault = try UnlockedVault.create(secret: key, label: "k", kdf: .moderate)
        vault.content.profiles["default"] = TestKeys.profile()
        try vault.setUserToken(UserTokenRecord(profile: "default", email: "a@b.io", token: TestKeys.token("aaaa")))
        try vault.setUserToken(UserTokenRecord(profile: "default", email: "c@d.io", token: TestKeys.token("cccc")))
        var parsed = try ParsedVault(parsing: try vault.sealed())
        // Swap the sealed bytes but keep the index, which the root authenticates.
        (parsed.records[0].bytes, parsed.records[1].bytes) = (parsed.records[1].bytes, parsed.records[0].bytes)
        let opened = try UnlockedVault.open(parsed, with: [key])
        #expect(throws: VaultError.self) { try opened.userToken(profile: "default", email: "a@b.io") }
    }

    @Test func removingAProfileDropsItsUserTokensOnly() throws {
        let vault = try UnlockedVault.create(secret: TestKeys.keyFile(11), label: "k", kdf: .moderate)
        vault.content.profiles["a"] = TestKeys.profile()
        vault.content.profiles["b"] = TestKeys.profile()
        try vault.setUserToken(UserTokenRecord(profile: "a", email: "x@y.io", token: TestKeys.token("1")))
        try vault.setUserToken(UserTokenRecord(profile: "b", email: "x@y.io", token: TestKeys.token("2")))
        vault.removeProfile("a")
        #expect(vault.userTokenCount(profile: "a") == 0)
        #expect(try vault.userToken(profile: "b", email: "x@y.io")?.token.value == "2")
    }
}

import Foundation
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

/// Issue 9: nothing a server answers or a file holds may trap a command, and
/// nothing the writer produces may be refused by the reader.
@Suite struct BoundsTests {
    let received = Date(timeIntervalSince1970: 1_700_000_000)

    private func jwt(_ payload: String) -> String {
        func b64url(_ text: String) -> String {
            Data(text.utf8).base64EncodedString()
                .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                .replacingOccurrences(of: "=", with: "")
        }
        return b64url(#"{"typ":"JWT","alg":"RS256"}"#) + "." + b64url(payload) + ".c2lnbmF0dXJl"
    }

    // MARK: - Token answers

    @Test(arguments: [
        "9223372036854775807", "1e17", "315360001", #""9223372036854775807""#, "99999999999999",
    ])
    func aLifetimeBeyondTenYearsIsRefused(expiresIn: String) {
        let body = #"{"token_type":"Bearer","expires_in":\#(expiresIn),"access_token":"x"}"#
        let parsed = TokenResponse.decode(Data(body.utf8))
        #expect(parsed == nil || parsed?.issued(receivedAt: received) == nil)
    }

    @Test func lifetimesInsideTheRangeAreKept() throws {
        for seconds in [1, 604_800, 7_776_000, 315_360_000] {
            let body = #"{"token_type":"Bearer","expires_in":\#(seconds),"access_token":"x"}"#
            let issued = try #require(TokenResponse.decode(Data(body.utf8))?.issued(receivedAt: received))
            #expect(issued.expiresAt == received.addingTimeInterval(TimeInterval(seconds)))
        }
    }

    @Test func aJWTExpOutsideTheRangeIsRefused() throws {
        // Alone: centuries ahead, or beyond what a date can hold.
        for exp in ["9223372036854775807", "253402300799", "2015360001"] {
            let body = #"{"token_type":"Bearer","access_token":"\#(jwt(#"{"exp":\#(exp)}"#))"}"#
            let parsed = try #require(TokenResponse.decode(Data(body.utf8)))
            #expect(parsed.issued(receivedAt: received) == nil, "exp \(exp)")
        }
        // Already past (a one-second token's whole-second exp): kept, and
        // renewed at its next use.
        let past = #"{"token_type":"Bearer","expires_in":1,"access_token":"\#(jwt(#"{"exp":1699999999}"#))"}"#
        #expect(TokenResponse.decode(Data(past.utf8))?.issued(receivedAt: received)?.expiresAt == Date(timeIntervalSince1970: 1_699_999_999))
        // With a sane expires_in the earlier of the two wins and is kept.
        let body = #"{"token_type":"Bearer","expires_in":604800,"access_token":"\#(jwt(#"{"exp":253402300799}"#))"}"#
        #expect(TokenResponse.decode(Data(body.utf8))?.issued(receivedAt: received)?.expiresAt == received.addingTimeInterval(604_800))
    }

    // MARK: - Dates read back from a vault

    private func vault(with profile: Profile) throws -> (UnlockedVault, UnlockSecret) {
        let key = TestKeys.keyFile(9)
        let vault = try UnlockedVault.create(secret: key, label: "key-file", kdf: .moderate)
        vault.content.profiles["default"] = profile
        return (vault, key)
    }

    @Test(arguments: [-1e300, 1e19, -1e19, 253_402_300_800, -1])
    func aSealedDateOutOfRangeIsCorruptNotACrash(seconds: Double) throws {
        var profile = TestKeys.profile(appToken: TestKeys.token("app"))
        profile.applicationToken?.expiresAt = Date(timeIntervalSince1970: seconds)
        let (vault, key) = try vault(with: profile)
        // The writer refuses it before anything is written…
        let refused = try #require(throws: VaultError.self) { try vault.sealed() }
        #expect(refused.kind == .usage)
        // …and a file that holds it anyway (crafted) is corrupt, in the clear
        // summary and in the sealed root alike.
        let bytes = try vault.sealedUnchecked()
        let summaryError = try #require(throws: VaultError.self) { try ParsedVault(parsing: bytes) }
        #expect(summaryError.kind == .corrupt)
        let rootError = try #require(throws: VaultError.self) {
            try UnlockedVault.open(try ParsedVault(parsing: bytes, readSummary: false), with: [key])
        }
        #expect(rootError.kind == .corrupt)
    }

    @Test func aSecretSetAtOutOfRangeIsCorrupt() throws {
        var profile = TestKeys.profile()
        profile.secretSetAt = Date(timeIntervalSince1970: -1e300)
        let (vault, _) = try vault(with: profile)
        #expect(throws: VaultError.self) { try vault.sealed() }
        #expect(throws: VaultError.self) { try ParsedVault(parsing: try vault.sealedUnchecked()) }
    }

    @Test func aUserTokenOutOfRangeIsNeverSealed() throws {
        let (vault, _) = try vault(with: TestKeys.profile())
        let record = UserTokenRecord(profile: "default", email: "ann@example.com", token: TestKeys.token("u", expires: 1e19))
        #expect(throws: VaultError.self) { try vault.setUserToken(record) }
    }

    @Test func printingAnyDateNeverTraps() {
        for seconds in [-1e300, 1e300, .infinity, -.infinity, .nan, 9.3e18, -9.3e18] {
            _ = ChildEnvironment.rfc3339(Date(timeIntervalSince1970: seconds))
            _ = DurationText.format(seconds)
            _ = Lifetime.describe(Date(timeIntervalSince1970: seconds), now: received)
        }
    }

    // MARK: - Values taken in

    @Test func theWriterRefusesWhatTheReaderWouldNot() throws {
        let (vault, _) = try vault(with: TestKeys.profile(secret: String(repeating: "s", count: VaultBounds.maxSecretLength + 1)))
        #expect(throws: VaultError.self) { try vault.sealed() }
        #expect(throws: VaultError.self) {
            try Credentials.set(in: vault, profile: "p", orgID: "o", clientID: "c",
                secret: String(repeating: "s", count: VaultBounds.maxSecretLength + 1), tokenURL: nil, apiURL: nil, now: received)
        }
        #expect(throws: VaultError.self) {
            try Credentials.validate(profile: "p", orgID: "o", clientID: "c",
                tokenURL: "https://go.tallyfy.com/" + String(repeating: "a", count: VaultBounds.maxURLLength), apiURL: nil)
        }
    }

    @Test func oneLabelRuleForInitKeysAddAndTheReader() throws {
        for bad in ["", "esc\u{1B}[31m", String(repeating: "x", count: 65), String(repeating: "é", count: 33), "two\nlines"] {
            #expect(throws: VaultError.self) { try UnlockedVault.create(secret: TestKeys.keyFile(1), label: bad, kdf: .moderate) }
            #expect(throws: VaultError.self) { try SlotLabel.check(bad) }
        }
        #expect(try UnlockedVault.create(secret: TestKeys.keyFile(1), label: String(repeating: "x", count: 64), kdf: .moderate).slotList.count == 1)
    }

    @Test func aFinalCRLFIsStrippedOnce() {
        func strip(_ text: String) -> String { String(decoding: Credentials.withoutFinalLineEnding(Data(text.utf8)), as: UTF8.self) }
        #expect(strip("sec\r\n") == "sec")
        #expect(strip("sec\n") == "sec")
        #expect(strip("sec") == "sec")
        #expect(strip("sec\n\n") == "sec\n")
        #expect(strip("sec\r") == "sec\r")
    }

    /// SECURITY.md's lowercasing vectors: context-free, no final sigma.
    @Test func locatorsLowercaseWithoutTheFinalSigmaRule() throws {
        #expect("ΣΑΣ@example.com".lowercased() == "σασ@example.com")
        #expect(Array("İ@x".lowercased().utf8) == [0x69, 0xCC, 0x87, 0x40, 0x78])
        #expect("ẞ@x".lowercased() == "ß@x")
        #expect("\u{1C89}@x".lowercased() == "\u{1C8A}@x")
        let (vault, _) = try vault(with: TestKeys.profile())
        #expect(vault.locator(profile: "default", email: "ΣΑΣ@example.com") == vault.locator(profile: "default", email: "σασ@example.com"))
        #expect(vault.locator(profile: "default", email: "ΣΑΣ@example.com") != vault.locator(profile: "default", email: "σας@example.com"))
    }

    // MARK: - dotenv

    @Test func dotenvRefusesWhatSomeReaderWouldExpand() throws {
        for value in ["a`id`b", "$(id)", "a'b", "a\"b", "a b", "a\nb", "~x", "a#b", "a\\b", "a;b"] {
            #expect(throws: VaultError.self) { try ExportFormat.dotenv.render([("TALLYFY_TOKEN", value)]) }
        }
        #expect(try ExportFormat.dotenv.render([("TALLYFY_API_URL", "https://go.tallyfy.com:443/api")]) == "TALLYFY_API_URL=https://go.tallyfy.com:443/api")
    }

    // MARK: - Weak slots

    @Test func slotsBelowInteractiveAreWeak() throws {
        _ = TestKeys.cheapKDF
        let vault = try UnlockedVault.create(secret: TestKeys.passphrase("p"), label: "cheap", kdf: .interactive)
        #expect(vault.slotList.first?.weak == true)  // the test hook's cost: 1 pass, 8 KiB
        #expect(KDFLevel.isWeak(opsLimit: 2, memLimit: 64 << 20) == false)
        #expect(KDFLevel.isWeak(opsLimit: 3, memLimit: 32 << 20) == true)
        #expect(try UnlockedVault.create(secret: TestKeys.keyFile(1), label: "k", kdf: .moderate).slotList.first?.weak == false)
    }
}

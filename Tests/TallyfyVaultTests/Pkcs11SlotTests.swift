import Foundation
import Testing
import CPKCS11
@testable import TallyfyVaultCore

/// The parts of a PKCS#11 slot that need no token: the URI, the slot's bytes
/// in the file, and the format version they require. (Tokens themselves are
/// exercised end to end with SoftHSM2 in CLITests' `Pkcs11Tests`.)
@Suite struct Pkcs11SlotTests {
    @Test func aURINamesTokenAndKeyWithPercentEscapes() throws {
        let uri = try Pkcs11URI(parsing: "pkcs11:token=My%20Token;object=vault-key;id=%01%ab;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so")
        #expect(uri.token == "My Token")
        #expect(uri.object == "vault-key")
        #expect(uri.id == [0x01, 0xab])
        #expect(uri.modulePath == "/usr/lib/softhsm/libsofthsm2.so")
    }

    @Test(arguments: [
        ("token=ops;object=k", "does not start with pkcs11:"),
        ("pkcs11:token=ops", "it names no key"),
        ("pkcs11:token=ops;object=k;slot-description=x", "is not one tallyfy-vault matches on"),
        ("pkcs11:token=ops;id=%0", "broken %-escape"),
        ("pkcs11:token=ops;object=k;type=cert", "is not a key"),
        ("pkcs11:token=ops;object=k?pin-value=1234", "a PIN is never taken from the command line"),
        ("pkcs11:token=ops;object=k;pin-source=file:/p", "a PIN is never taken from the command line"),
    ])
    func aURITheVaultCantUseIsAUsageError(_ text: String, _ expected: String) {
        do {
            _ = try Pkcs11URI(parsing: text)
            Issue.record("\(text) was accepted")
        } catch let error as VaultError {
            #expect(error.kind == .usage)
            #expect(error.message.contains(expected), "\(error.message)")
            #expect(!error.message.contains("1234"))
        } catch {
            Issue.record("\(error)")
        }
    }

    /// A slot's token fields as the writer lays them out (SECURITY.md).
    static func parameters(ciphertextLength: Int = 256) -> [UInt8] {
        var writer = ByteWriter()
        writer.u8(1)
        for field in [Array("ops".utf8), Array("89203c4512f90990".utf8), [0x01]] {
            writer.u8(UInt8(field.count))
            writer.raw(field)
        }
        writer.u16(UInt16(ciphertextLength))
        writer.raw([UInt8](repeating: 0x5a, count: ciphertextLength))
        return writer.bytes
    }

    /// A vault with a key-file slot and a (made-up) PKCS#11 slot, sealed.
    func vaultWithTokenSlot(parameters: [UInt8] = parameters()) throws -> (UnlockedVault, Data) {
        let vault = try UnlockedVault.create(secret: TestKeys.keyFile(3), label: "key-file", kdf: .moderate)
        var slots = vault.slots
        slots.append(KeySlot(kind: .pkcs11, label: "hsm", salt: [UInt8](repeating: 7, count: 16), parameters: parameters,
            nonce: [UInt8](repeating: 1, count: 24), wrappedKey: [UInt8](repeating: 2, count: 48)))
        vault.replaceSlotsForTesting(slots)
        return (vault, try vault.sealed())
    }

    @Test func aTokenSlotMakesAVersion2FileThatReadsBackAsWritten() throws {
        let (_, bytes) = try vaultWithTokenSlot()
        #expect(bytes[8] == 2 && bytes[9] == 0)
        let parsed = try ParsedVault(parsing: bytes)
        let slot = try #require(parsed.slots.last)
        #expect(slot.kind == .pkcs11 && slot.parameters == Self.parameters())
        let info = SlotInfo(slot)
        #expect(info.token == "ops" && info.tokenSerial == "89203c4512f90990" && info.keyID == "01")
        // The key file still opens it: the token slot is simply not its kind.
        _ = try UnlockedVault.open(parsed, with: [TestKeys.keyFile(3)])

        // Without a token slot the same vault is version 1 again, for older releases.
        let plain = try UnlockedVault.create(secret: TestKeys.keyFile(3), label: "key-file", kdf: .moderate)
        let plainBytes = try plain.sealed()
        #expect(plainBytes[8] == 1 && plainBytes[9] == 0)
    }

    @Test func aTokenSlotInAVersion1FileIsCorrupt() throws {
        var (_, bytes) = try vaultWithTokenSlot()
        bytes[8] = 1
        #expect(throws: VaultError.self) { try ParsedVault(parsing: bytes) }
    }

    @Test(arguments: [0, 1025]) func aTokenSlotWithAnImpossibleCiphertextLengthIsCorrupt(_ length: Int) throws {
        var parameters = Self.parameters(ciphertextLength: 4)
        // Rewrite the length field (after mechanism, three fields) to claim `length` bytes.
        let at = 1 + 1 + 3 + 1 + 16 + 1 + 1
        parameters[at] = UInt8(length & 0xff)
        parameters[at + 1] = UInt8(length >> 8)
        let (_, bytes) = try vaultWithTokenSlot(parameters: parameters)
        do {
            _ = try ParsedVault(parsing: bytes)
            Issue.record("a ciphertext length of \(length) was accepted")
        } catch let error as VaultError {
            #expect(error.kind == .corrupt)
        }
    }

    @Test func anUnknownMechanismIsCorrupt() throws {
        var parameters = Self.parameters()
        parameters[0] = 9
        let (_, bytes) = try vaultWithTokenSlot(parameters: parameters)
        #expect(throws: VaultError.self) { try ParsedVault(parsing: bytes) }
    }

    /// The software EME-OAEP used with tokens that do bare RSA only: what it
    /// encodes it decodes, and any changed byte is refused.
    @Test func oaepEncodingRoundTripsAndRefusesDamage() throws {
        let message = [UInt8](repeating: 0xa5, count: 32)
        let em = try #require(message.withUnsafeBytes { RSAOAEP.encode($0, modulusLength: 256) })
        #expect(em.count == 256 && em[0] == 0)
        func decoded(_ bytes: [UInt8]) -> [UInt8]? {
            bytes.withUnsafeBytes { raw -> [UInt8]? in
                guard let message = RSAOAEP.decode(raw, modulusLength: 256) else { return nil }
                return message.withUnsafeBytes { Array($0) }
            }
        }
        #expect(decoded(em) == message)
        // A bare RSA result may come back without its leading zero byte.
        #expect(decoded(Array(em.dropFirst())) == message)
        for position in [0, 1, 40, 100, 255] {
            var damaged = em
            damaged[position] ^= 0x01
            #expect(decoded(damaged) == nil, "byte \(position)")
        }
        #expect([UInt8](repeating: 0, count: 200).withUnsafeBytes { RSAOAEP.encode($0, modulusLength: 256) } == nil)
    }

    /// What a token says about a PIN becomes the message (SoftHSM2 keeps no
    /// try counter, so these answers are checked here, not end to end).
    @Test func pinAnswersSayWhatTheTokenSaid() throws {
        let token = try Pkcs11Token(uri: try Pkcs11URI(parsing: "pkcs11:token=ops;object=k"),
            environment: [Pkcs11Token.moduleVariable: "/nonexistent/module.so"])
        let wrong = token.error(CKR_PIN_INCORRECT, doing: "logging in")
        #expect(wrong.kind == .refused && wrong.message == "wrong PIN for the PKCS#11 token of pkcs11:token=ops;object=k")
        let low = token.error(CKR_PIN_INCORRECT, doing: "logging in", flags: CK_FLAGS(CKF_USER_PIN_COUNT_LOW))
        #expect(low.kind == .refused && low.message.hasSuffix("(the token says few tries are left before it locks the PIN)"))
        let last = token.error(CKR_PIN_INCORRECT, doing: "logging in", flags: CK_FLAGS(CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_COUNT_LOW))
        #expect(last.kind == .refused && last.message.hasSuffix("(the token says one try is left before it locks the PIN)"))
        let locked = token.error(CKR_PIN_LOCKED, doing: "logging in")
        #expect(locked.kind == .refused && locked.message == "the PIN of the PKCS#11 token of pkcs11:token=ops;object=k is locked after too many wrong tries")
        let absent = token.error(CKR_TOKEN_NOT_PRESENT, doing: "opening a session on the token")
        #expect(absent.kind == .notFound && absent.message.contains("pkcs11:token=ops;object=k"))
    }
}

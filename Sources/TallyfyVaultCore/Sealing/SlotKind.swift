/// What opens a key slot: a passphrase (Argon2id), a key file (keyed
/// BLAKE2b) or a PKCS#11 token (RSA-OAEP on the token). One type for the
/// slot in the file (its raw value is the kind byte, SECURITY.md "Key
/// slots"), the secret that opens it, what `keys list` and `status` show
/// (`name`) and the default slot label.
///
/// This is the slot table: each kind's behaviour lives in its own file, as
/// a `SlotMethod` (`PassphraseSlot`, `KeyFileSlot`, `Pkcs11Slot`). Adding a
/// kind is a new case here and a new method file; the format, the unlocker,
/// `rekey` and the listings go through `method` and know no kind by name.
package enum SlotKind: UInt8, Sendable, Equatable, Codable, CaseIterable {
    case passphrase = 1
    case keyFile = 2
    case pkcs11 = 3

    var method: any SlotMethod.Type {
        switch self {
        case .passphrase: PassphraseSlot.self
        case .keyFile: KeyFileSlot.self
        case .pkcs11: Pkcs11Slot.self
        }
    }

    /// How the CLI names it, in text and JSON: `passphrase`, `key-file` or
    /// `pkcs11`; also the label of the first slot of this kind.
    package var name: String { method.name }

    // In JSON (status, keys list) the kind is its name, not its byte.
    package init(from decoder: any Decoder) throws {
        let name = try decoder.singleValueContainer().decode(String.self)
        guard let kind = SlotKind.allCases.first(where: { $0.name == name }) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown slot kind \(name)"))
        }
        self = kind
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(name)
    }
}

/// What one kind of key slot does, as age's `Identity` and `Recipient` do for
/// its stanzas. Every slot wraps the data key the same way (XChaCha20-Poly1305
/// under a 32-byte slot key, `KeySlot`); a kind says only how its slot key is
/// made and found again, and which bytes of its own the slot carries between
/// the salt and the nonce (`parameters`, SECURITY.md "Key slots").
protocol SlotMethod {
    /// The kind's name in text and JSON.
    static var name: String { get }
    /// The lowest vault format version that may carry this kind: a reader
    /// older than that refuses the whole file by its version, with a message
    /// that says so, instead of calling an unknown slot damage.
    static var formatVersion: UInt16 { get }
    /// How a user unlocks with it, for "this vault has no … slot" hints.
    static var unlockHint: String { get }

    /// Reads and checks the kind's own bytes from a slot in the file.
    static func readParameters(from reader: inout ByteReader, label: String) throws -> [UInt8]
    /// A new slot key for `secret`, and the parameters to store beside it.
    static func newSlotKey(for secret: UnlockSecret, salt: [UInt8], kdf: KDFLevel) throws -> (parameters: [UInt8], key: SecretBox)
    /// The slot key `secret` recovers for `slot`; `nil` when it can't be
    /// this slot's secret. Throws when the secret itself can't be used (a
    /// PKCS#11 token absent, a wrong PIN): that is the user's to fix.
    static func slotKey(_ slot: KeySlot, with secret: UnlockSecret) throws -> SecretBytes?
    /// What `keys list` and `status` may show of a slot: never key material.
    static func describe(_ slot: KeySlot, into info: inout SlotInfo)
    /// The Argon2id cost to keep when `rekey` makes this slot again.
    static func kdfLevel(of slot: KeySlot) -> KDFLevel
}

extension SlotMethod {
    static var formatVersion: UInt16 { 1 }
    static func describe(_ slot: KeySlot, into info: inout SlotInfo) {}
    static func kdfLevel(of slot: KeySlot) -> KDFLevel { .moderate }
}

/// The one rule for slot labels, applied by `init --label`, `keys add
/// --label` and the reader alike: 1 to 64 bytes of UTF-8, no control
/// characters (a label is printed by `keys list` and `status`).
package enum SlotLabel {
    static let maxLength = 64

    package static func isValid(_ label: String) -> Bool {
        !label.isEmpty && label.utf8.count <= maxLength && !label.unicodeScalars.contains(where: \.isControl)
    }

    package static func check(_ label: String) throws {
        guard isValid(label) else {
            throw VaultError(.usage, "a slot label must be 1 to \(maxLength) bytes on one line, without control characters",
                hint: "choose a shorter --label, e.g. ops-laptop")
        }
    }
}

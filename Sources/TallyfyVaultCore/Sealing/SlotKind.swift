/// What opens a key slot: a passphrase (Argon2id) or a key file (keyed
/// BLAKE2b). One type for the slot in the file (its raw value is the kind
/// byte, SECURITY.md "Key slots"), the secret that opens it, what `keys list`
/// and `status` show (`name`) and the default slot label.
public enum SlotKind: UInt8, Sendable, Equatable, Codable {
    case passphrase = 1
    case keyFile = 2

    /// How the CLI names it, in text and JSON: `passphrase` or `key-file`;
    /// also the label of the first slot of this kind.
    public var name: String {
        switch self {
        case .passphrase: "passphrase"
        case .keyFile: "key-file"
        }
    }

    // In JSON (status, keys list) the kind is its name, not its byte.
    public init(from decoder: any Decoder) throws {
        let name = try decoder.singleValueContainer().decode(String.self)
        guard let kind = [SlotKind.passphrase, .keyFile].first(where: { $0.name == name }) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown slot kind \(name)"))
        }
        self = kind
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(name)
    }
}

/// The one rule for slot labels, applied by `init --label`, `keys add
/// --label` and the reader alike: 1 to 64 bytes of UTF-8, no control
/// characters (a label is printed by `keys list` and `status`).
public enum SlotLabel {
    static let maxLength = 64

    public static func isValid(_ label: String) -> Bool {
        !label.isEmpty && label.utf8.count <= maxLength && !label.unicodeScalars.contains(where: \.isControl)
    }

    public static func check(_ label: String) throws {
        guard isValid(label) else {
            throw VaultError(.usage, "a slot label must be 1 to \(maxLength) bytes on one line, without control characters",
                hint: "choose a shorter --label, e.g. ops-laptop")
        }
    }
}

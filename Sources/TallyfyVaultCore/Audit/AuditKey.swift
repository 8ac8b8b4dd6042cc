#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The two keys of a vault's audit records, both from one 32-byte audit key
/// that only an unlock source reaches (`UnlockedVault.auditKey`): one MACs
/// each record with the one before it, one fingerprints tokens.
///
/// Keyed, not plain hashes: without the key nobody can mend a chain after
/// editing it, forge a record, or test a guessed token against the log.
/// Held in ordinary memory, as record locators' key is: it opens nothing,
/// it only vouches for records.
package struct AuditKey: Sendable {
    private let macKey: [UInt8]
    private let fingerprintKey: [UInt8]

    init(root: [UInt8]) {
        macKey = root.withUnsafeBytes { Sodium.keyedName(outputBytes: 32, key: $0, message: Array("TFYVAULT-audit-mac-v1".utf8)) }
        fingerprintKey = root.withUnsafeBytes {
            Sodium.keyedName(outputBytes: 32, key: $0, message: Array("TFYVAULT-audit-fingerprint-v1".utf8))
        }
    }

    /// What a record says of a token: 16 bytes of keyed BLAKE2b, in hex.
    package func fingerprint(of token: String) -> String {
        AuditHex.encode(fingerprintKey.withUnsafeBytes { Sodium.keyedName(outputBytes: 16, key: $0, message: Array(token.utf8)) })
    }

    /// The MAC of a record's bytes up to its `mac` field (which include the
    /// hash of the line before it): 32 bytes of keyed BLAKE2b, in hex.
    func mac(_ prefix: some ContiguousBytes) -> String {
        AuditHex.encode(macKey.withUnsafeBytes { Sodium.keyedName(outputBytes: 32, key: $0, message: prefix) })
    }

    /// `mac` as hex bytes, for `verify`'s one pass.
    func macHex(_ prefix: UnsafeRawBufferPointer) -> [UInt8] {
        AuditHex.encodeBytes(macKey.withUnsafeBytes { Sodium.keyedName(outputBytes: 32, key: $0, message: prefix) })
    }

    /// `link` as hex bytes.
    static func linkHex(_ line: UnsafeRawBufferPointer) -> [UInt8] {
        AuditHex.encodeBytes(Sodium.keyedName(outputBytes: 16, key: UnsafeRawBufferPointer(start: nil, count: 0), message: line))
    }

    /// The unkeyed hash that links a line to the one before it (16 bytes, hex).
    static func link(_ line: some ContiguousBytes) -> String {
        AuditHex.encode(Sodium.keyedName(outputBytes: 16, key: UnsafeRawBufferPointer(start: nil, count: 0), message: line))
    }

    /// What the first record of a log links to.
    static let genesis = String(repeating: "0", count: 32)
}

enum AuditHex {
    private static let digits = Array("0123456789abcdef".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        String(decoding: encodeBytes(bytes), as: UTF8.self)
    }

    static func encodeBytes(_ bytes: [UInt8]) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: bytes.count * 2) { out, count in
            for (index, byte) in bytes.enumerated() {
                out[2 * index] = digits[Int(byte >> 4)]
                out[2 * index + 1] = digits[Int(byte & 15)]
            }
            count = bytes.count * 2
        }
    }

    static func decode(_ text: String) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: c - 0x30
            case 0x61...0x66: c - 0x61 + 10
            default: nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(utf8.count / 2)
        var index = 0
        while index < utf8.count {
            guard let high = value(utf8[index]), let low = value(utf8[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }
}

/// Where a vault sealed the head of one audit log at its last write: the
/// last record's number and its link hash. A log that ends before it was
/// cut back.
package struct AuditHead: Codable, Sendable, Equatable {
    package var seq: UInt64
    package var link: String
    package var at: Date

    package init(seq: UInt64, link: String, at: Date) {
        self.seq = seq
        self.link = link
        self.at = at
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Appends little-endian integers and byte strings: the writing half of the
/// file format in SECURITY.md.
struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ value: UInt8) { bytes.append(value) }
    mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    mutating func i64(_ value: Int64) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    mutating func raw(_ value: some Sequence<UInt8>) { bytes += value }
}

/// Reads the vault file from the front; every read checks the remaining
/// length, so a truncated or hostile file gives `VaultError.corrupt`, never a
/// crash.
struct ByteReader {
    let data: Data
    private(set) var offset: Int

    init(_ data: Data) {
        self.data = data
        offset = 0
    }

    var remaining: Int { data.count - offset }

    mutating func raw(_ count: Int, _ what: String) throws -> Data {
        guard count >= 0, count <= remaining else {
            throw VaultError(.corrupt, "the vault file is truncated (in the \(what))", hint: Self.restoreHint)
        }
        let start = data.startIndex + offset
        offset += count
        return data[start..<start + count]
    }

    mutating func bytes(_ count: Int, _ what: String) throws -> [UInt8] { Array(try raw(count, what)) }

    /// A little-endian u32 at an absolute offset, without moving the cursor.
    func u32(at position: Int) throws -> UInt32 {
        guard position >= 0, position + 4 <= data.count else {
            throw VaultError(.corrupt, "the vault file is truncated (in the index)", hint: Self.restoreHint)
        }
        let start = data.startIndex + position
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(data[start + $1]) << (8 * $1) }
    }

    /// A little-endian signed i64 at an absolute offset, without moving the cursor.
    func i64(at position: Int) throws -> Int64 {
        guard position >= 0, position + 8 <= data.count else {
            throw VaultError(.corrupt, "the vault file is truncated (in the index)", hint: Self.restoreHint)
        }
        let start = data.startIndex + position
        return Int64(bitPattern: (0..<8).reduce(UInt64(0)) { $0 | UInt64(data[start + $1]) << (8 * $1) })
    }

    mutating func u8(_ what: String) throws -> UInt8 { try raw(1, what).first! }
    mutating func u16(_ what: String) throws -> UInt16 { UInt16(try integer(2, what)) }
    mutating func u32(_ what: String) throws -> UInt32 { UInt32(try integer(4, what)) }
    mutating func u64(_ what: String) throws -> UInt64 { try integer(8, what) }
    mutating func i64(_ what: String) throws -> Int64 { Int64(bitPattern: try integer(8, what)) }

    private mutating func integer(_ width: Int, _ what: String) throws -> UInt64 {
        var value: UInt64 = 0
        for (shift, byte) in try raw(width, what).enumerated() { value |= UInt64(byte) << (8 * shift) }
        return value
    }

    static let restoreHint = "restore the vault from a backup"
}

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
    func u32(at position: Int) throws -> UInt32 { UInt32(try integer(at: position, width: 4)) }

    /// A little-endian signed i64 at an absolute offset, without moving the cursor.
    func i64(at position: Int) throws -> Int64 { Int64(bitPattern: try integer(at: position, width: 8)) }

    private func integer(at position: Int, width: Int) throws -> UInt64 {
        guard position >= 0, position + width <= data.count else {
            throw VaultError(.corrupt, "the vault file is truncated (in the index)", hint: Self.restoreHint)
        }
        return data.withUnsafeBytes { Self.littleEndian($0, at: position, width: width) }
    }

    mutating func u8(_ what: String) throws -> UInt8 { try raw(1, what).first! }
    mutating func u16(_ what: String) throws -> UInt16 { UInt16(try integer(2, what)) }
    mutating func u32(_ what: String) throws -> UInt32 { UInt32(try integer(4, what)) }
    mutating func u64(_ what: String) throws -> UInt64 { try integer(8, what) }
    mutating func i64(_ what: String) throws -> Int64 { Int64(bitPattern: try integer(8, what)) }

    private mutating func integer(_ width: Int, _ what: String) throws -> UInt64 {
        let position = offset
        _ = try raw(width, what)
        return data.withUnsafeBytes { Self.littleEndian($0, at: position, width: width) }
    }

    /// The one little-endian decoder of the format: `width` bytes at `position`
    /// (the caller has checked they are there).
    static func littleEndian(_ raw: UnsafeRawBufferPointer, at position: Int, width: Int) -> UInt64 {
        (0..<width).reduce(UInt64(0)) { $0 | UInt64(raw[position + $1]) << (8 * $1) }
    }

    static let restoreHint = "restore the vault from a backup"
}

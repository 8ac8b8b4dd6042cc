#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The vault file format, version 1, exactly as SECURITY.md documents it.
///
/// ```
/// header   magic "TFYVAULT" | version u16 | header length u32 | slot count u8 | slots | summary length u32 | summary JSON
/// index    record count u32 | count × (locator 16 | profile tag 8 | expires-at i64 | sealed length u32 | tag 16)
/// root     nonce 24 | sealed length u32 | sealed root (padded JSON + tag), AD = header ‖ index
/// records  count × (nonce 24 | sealed record (padded JSON + tag)), AD = "TFYVAULT-record-v1" ‖ locator
/// ```
/// All integers are little-endian. The index is authenticated through the
/// root's associated data and pins each record's tag, so a record can be
/// opened alone yet cannot be swapped, replayed or dropped unnoticed.
enum VaultFormat {
    static let magic = Array("TFYVAULT".utf8)
    /// Version 1, and version 2 where a slot's kind needs it (a PKCS#11
    /// slot): the layout is the same, the number tells an older reader it
    /// can't open the file instead of letting it call the slot damage.
    static let version: UInt16 = 1
    static let versionsRead: [UInt16] = [1, 2]

    /// The version a vault with `slots` is written as: the lowest that
    /// carries every slot's kind, so a vault without PKCS#11 slots stays
    /// readable by every release.
    static func version(for slots: [KeySlot]) -> UInt16 {
        slots.map { $0.kind.method.formatVersion }.max() ?? version
    }
    static let maxSlots = 32
    static let maxSummaryLength = 1 << 20
    static let maxRootLength = 64 << 20
    static let maxRecordLength = 1 << 20
    static let maxRecords = 1_000_000
    /// Bodies are padded to a multiple of this, so the file's size does not
    /// give away the exact length of a secret.
    static let padBlock = 256
    static let recordAssociatedPrefix = Array("TFYVAULT-record-v1".utf8)
}

/// One row of the clear-text index: where a sealed user-token record is and
/// what is needed to find and check it without opening the others.
struct IndexEntry: Sendable, Equatable {
    static let byteLength = 16 + 8 + 8 + 4 + 16
    /// Where the sealed length sits inside an entry.
    static let lengthOffset = 16 + 8 + 8
    /// Where the expiry sits inside an entry.
    static let expiryOffset = 16 + 8

    /// Keyed hash of (profile, email): finds a record without revealing whose it is.
    var locator: [UInt8]
    /// Keyed hash of the profile name: which records belong to one profile.
    var profileTag: [UInt8]
    /// The token's expiry, Unix seconds, for the keyless summary.
    var expiresAt: Int64
    /// Length of the sealed record (ciphertext and tag), without its nonce.
    var sealedLength: UInt32
    /// The record's Poly1305 tag, pinned here so the root authenticates it.
    var tag: [UInt8]
}

/// A sealed user-token record as it sits in the file: opened only on demand.
struct SealedRecord: Sendable {
    var entry: IndexEntry
    /// Nonce followed by ciphertext and tag.
    var bytes: Data
}

/// A vault file split into its parts, with nothing decrypted yet.
struct ParsedVault: Sendable {
    var slots: [KeySlot]
    var summary: VaultSummary
    /// The exact header bytes, which the root authenticates.
    var headerBytes: Data
    var indexBytes: Data
    var rootNonce: Data
    var rootSealed: Data
    var recordTable: RecordTable

    /// Every record with its index entry (materialised; for tests and tools).
    var records: [SealedRecord] {
        get { recordTable.all }
        set { recordTable = RecordTable(newValue) }
    }
}

/// The user-token records: either still the clear index and sealed region as
/// they sit in the file, read in place, or a list once something changes.
///
/// A lookup scans the index bytes for a locator (a 16-byte compare per
/// record, no allocation) and slices out the one record it needs: that is
/// what keeps `exec --user` on ten thousand users close to its cost on one.
struct RecordTable: Sendable {
    private enum Storage: Sendable {
        case file(entries: Data, region: Data, count: Int)
        case list([SealedRecord])
    }

    private var storage: Storage

    /// Index entries and the sealed region exactly as parsed (lengths checked).
    init(entries: Data, region: Data, count: Int) {
        storage = .file(entries: entries, region: region, count: count)
    }

    init(_ records: [SealedRecord]) {
        storage = .list(records)
    }

    var all: [SealedRecord] {
        switch storage {
        case .list(let records):
            return records
        case .file(let entries, let region, let count):
            var records: [SealedRecord] = []
            records.reserveCapacity(count)
            var offset = region.startIndex
            for position in 0..<count {
                let entry = Self.entry(entries, at: position)
                let end = offset + Sodium.aeadNonceBytes + Int(entry.sealedLength)
                records.append(SealedRecord(entry: entry, bytes: region[offset..<end]))
                offset = end
            }
            return records
        }
    }

    /// Seals in `newRecords`: each replaces the record with its locator, or is
    /// appended. Edits one list in place, so sealing ten thousand records is
    /// linear (a lookup table is built only when there is more than one).
    mutating func upsert(_ newRecords: [SealedRecord]) {
        var list = takeList()
        var positions: [[UInt8]: Int] = [:]
        if newRecords.count > 1 {
            for (position, record) in list.enumerated() { positions[record.entry.locator] = position }
        }
        for record in newRecords {
            let locator = record.entry.locator
            let position = newRecords.count > 1 ? positions[locator] : list.firstIndex { $0.entry.locator == locator }
            if let position {
                list[position] = record
            } else {
                positions[locator] = list.count
                list.append(record)
            }
        }
        storage = .list(list)
    }

    /// Drops every record `shouldRemove` picks; returns how many went.
    mutating func removeAll(where shouldRemove: (SealedRecord) -> Bool) -> Int {
        var list = takeList()
        let before = list.count
        list.removeAll(where: shouldRemove)
        storage = .list(list)
        return before - list.count
    }

    /// The records as a list this table no longer shares, so editing it does
    /// not copy (a copy per edit is what made rekey quadratic).
    private mutating func takeList() -> [SealedRecord] {
        let list = all
        storage = .list([])
        return list
    }

    /// The record whose locator is `locator`, if any.
    func find(_ locator: [UInt8]) -> SealedRecord? {
        switch storage {
        case .list(let records):
            return records.first { $0.entry.locator == locator }
        case .file(let entries, let region, let count):
            var offset = region.startIndex
            return entries.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> SealedRecord? in
                locator.withUnsafeBytes { wanted in
                    for position in 0..<count {
                        let start = position * IndexEntry.byteLength
                        let length = Sodium.aeadNonceBytes + Int(Self.u32(raw, start + IndexEntry.lengthOffset))
                        if memcmp(raw.baseAddress! + start, wanted.baseAddress!, 16) == 0 {
                            return SealedRecord(entry: Self.entry(entries, at: position), bytes: region[offset..<offset + length])
                        }
                        offset += length
                    }
                    return nil
                }
            }
        }
    }

    private static func u32(_ raw: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        UInt32(ByteReader.littleEndian(raw, at: at, width: 4))
    }

    private static func entry(_ entries: Data, at position: Int) -> IndexEntry {
        let start = entries.startIndex + position * IndexEntry.byteLength
        var reader = ByteReader(entries[start..<start + IndexEntry.byteLength])
        // The slice has exactly one entry's bytes, so these reads cannot fail.
        return IndexEntry(
            locator: try! reader.bytes(16, "index"), profileTag: try! reader.bytes(8, "index"),
            expiresAt: try! reader.i64("index"), sealedLength: try! reader.u32("index"), tag: try! reader.bytes(16, "index"))
    }
}

extension ParsedVault {
    /// Splits `data` into its parts, checking every length against the
    /// limits above. Throws `.corrupt` for anything that is not a well-formed
    /// version-1 vault.
    ///
    /// With `readSummary` false the clear summary is skipped (and `summary`
    /// left empty): opening with a key needs only its bytes, which the root
    /// authenticates as part of the header, and decoding it is a large share
    /// of the `exec` fast path.
    init(parsing data: Data, readSummary: Bool = true) throws {
        var reader = ByteReader(data)
        let magic = (try? reader.bytes(VaultFormat.magic.count, "magic")) ?? []
        guard magic == VaultFormat.magic else {
            throw VaultError(.corrupt, "this is not a tallyfy-vault file (its first bytes are not TFYVAULT)",
                hint: "check the --vault path")
        }
        let version = try reader.u16("header")
        guard VaultFormat.versionsRead.contains(version) else {
            throw VaultError(.corrupt, "vault format version \(version) is not supported (this tallyfy-vault reads versions \(VaultFormat.versionsRead.map(String.init).joined(separator: " and ")))",
                hint: "open it with the tallyfy-vault release that wrote it")
        }
        let headerLength = Int(try reader.u32("header"))
        guard headerLength <= data.count else {
            throw VaultError(.corrupt, "the vault file is truncated (in the header)", hint: ByteReader.restoreHint)
        }
        let slotCount = Int(try reader.u8("header"))
        guard (1...VaultFormat.maxSlots).contains(slotCount) else {
            throw VaultError(.corrupt, "the vault header is damaged (\(slotCount) key slots)", hint: ByteReader.restoreHint)
        }
        slots = try (0..<slotCount).map { _ in try KeySlot.read(from: &reader, formatVersion: version) }
        let summaryLength = Int(try reader.u32("summary"))
        guard summaryLength <= VaultFormat.maxSummaryLength else {
            throw VaultError(.corrupt, "the vault header is damaged (summary length)", hint: ByteReader.restoreHint)
        }
        let summaryBytes = try reader.raw(summaryLength, "summary")
        guard reader.offset == headerLength else {
            throw VaultError(.corrupt, "the vault header is damaged (its length does not add up)", hint: ByteReader.restoreHint)
        }
        headerBytes = data[data.startIndex..<data.startIndex + headerLength]
        // Names from the clear header reach terminals and Prometheus labels
        // before any key has authenticated them: only well-formed ones pass.
        if readSummary {
            guard let summary = try? SealedJSON.decoder().decode(VaultSummary.self, from: summaryBytes),
                summary.profiles.keys.allSatisfy({ (try? Credentials.checkProfileName($0)) != nil }),
                // Dates reach calendar and whole-second conversions in the
                // keyless `status` and `check`: out of range is damage.
                summary.profiles.values.allSatisfy(\.isReadable),
                summary.vaultID.map(SeenGenerations.isName) ?? true
            else {
                throw VaultError(.corrupt, "the vault header is damaged (summary)", hint: ByteReader.restoreHint)
            }
            self.summary = summary
        } else {
            summary = VaultSummary()
        }

        let indexStart = reader.offset
        let recordCount = Int(try reader.u32("index"))
        guard recordCount <= VaultFormat.maxRecords, recordCount * IndexEntry.byteLength <= reader.remaining else {
            throw VaultError(.corrupt, "the vault file is truncated (in the index)", hint: ByteReader.restoreHint)
        }
        // Only the lengths are read now; entries stay bytes in the file until
        // asked for, so opening a vault of ten thousand users allocates nothing
        // per user (see `RecordTable`).
        let entriesStart = reader.offset
        var recordsLength = 0
        for position in 0..<recordCount {
            let length = Int(try reader.u32(at: entriesStart + position * IndexEntry.byteLength + IndexEntry.lengthOffset))
            let expiresAt = try reader.i64(at: entriesStart + position * IndexEntry.byteLength + IndexEntry.expiryOffset)
            guard length >= Sodium.aeadTagBytes, length <= VaultFormat.maxRecordLength, VaultBounds.isValid(seconds: expiresAt) else {
                throw VaultError(.corrupt, "the vault index is damaged", hint: ByteReader.restoreHint)
            }
            recordsLength += Sodium.aeadNonceBytes + length
        }
        let entries = try reader.raw(recordCount * IndexEntry.byteLength, "index")
        indexBytes = data[data.startIndex + indexStart..<data.startIndex + reader.offset]

        rootNonce = try reader.raw(Sodium.aeadNonceBytes, "sealed body")
        let rootLength = Int(try reader.u32("sealed body"))
        guard rootLength >= Sodium.aeadTagBytes, rootLength <= VaultFormat.maxRootLength else {
            throw VaultError(.corrupt, "the vault's sealed body is damaged", hint: ByteReader.restoreHint)
        }
        rootSealed = try reader.raw(rootLength, "sealed body")

        recordTable = RecordTable(entries: entries, region: try reader.raw(recordsLength, "user-token records"), count: recordCount)
        guard reader.remaining == 0 else {
            throw VaultError(.corrupt, "the vault file has \(reader.remaining) unexpected bytes at its end", hint: ByteReader.restoreHint)
        }
    }

    /// The header bytes for `slots` and `summary`.
    static func encodeHeader(slots: [KeySlot], summary: VaultSummary) throws -> [UInt8] {
        let summaryBytes = try SealedJSON.encoder().encode(summary)
        var body = ByteWriter()
        body.u8(UInt8(slots.count))
        for slot in slots { slot.write(to: &body) }
        body.u32(UInt32(summaryBytes.count))
        body.raw(summaryBytes)

        var header = ByteWriter()
        header.raw(VaultFormat.magic)
        header.u16(VaultFormat.version(for: slots))
        header.u32(UInt32(VaultFormat.magic.count + 2 + 4 + body.bytes.count))
        header.raw(body.bytes)
        return header.bytes
    }

    static func encodeIndex(_ records: [SealedRecord]) -> [UInt8] {
        var index = ByteWriter()
        index.bytes.reserveCapacity(4 + records.count * IndexEntry.byteLength)
        index.u32(UInt32(records.count))
        for record in records {
            let entry = record.entry
            index.raw(entry.locator)
            index.raw(entry.profileTag)
            index.i64(entry.expiresAt)
            index.u32(entry.sealedLength)
            index.raw(entry.tag)
        }
        return index.bytes
    }
}

extension KeySlot {
    /// One slot: kind u8 | label length u8 | label | salt 16 | the kind's
    /// parameters (`SlotMethod.readParameters`) | nonce 24 | wrapped key 48.
    static func read(from reader: inout ByteReader, formatVersion: UInt16) throws -> KeySlot {
        guard let kind = SlotKind(rawValue: try reader.u8("key slot")), kind.method.formatVersion <= formatVersion else {
            throw VaultError(.corrupt, "the vault header has a key slot of an unknown kind", hint: ByteReader.restoreHint)
        }
        let labelLength = Int(try reader.u8("key slot"))
        guard let label = String(data: try reader.raw(labelLength, "key slot"), encoding: .utf8),
            SlotLabel.isValid(label)
        else {
            throw VaultError(.corrupt, "the vault header has a damaged key slot label", hint: ByteReader.restoreHint)
        }
        let salt = try reader.bytes(saltLength, "key slot")
        let parameters = try kind.method.readParameters(from: &reader, label: label)
        return KeySlot(
            kind: kind, label: label, salt: salt, parameters: parameters,
            nonce: try reader.bytes(Sodium.aeadNonceBytes, "key slot"),
            wrappedKey: try reader.bytes(wrappedKeyLength, "key slot"))
    }

    func write(to writer: inout ByteWriter) {
        let labelBytes = Array(label.utf8)
        writer.u8(kind.rawValue)
        writer.u8(UInt8(labelBytes.count))
        writer.raw(labelBytes)
        writer.raw(salt)
        writer.raw(parameters)
        writer.raw(nonce)
        writer.raw(wrappedKey)
    }
}

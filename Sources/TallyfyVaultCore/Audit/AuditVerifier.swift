#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Reads an audit log back: every line of every file of it, oldest first,
/// checked (`verify`) or decoded (`records`).
package struct AuditReader {
    package let log: AuditLog

    package init(log: AuditLog) {
        self.log = log
    }

    /// One line of the log and where it is.
    struct Line {
        var file: String
        var number: Int
        var bytes: ArraySlice<UInt8>
        var place: String { "line \(number) of \(file)" }
    }

    func lines() throws -> [Line] {
        var out: [Line] = []
        for file in log.files() {
            let data = [UInt8](try FileSafety.readPrivate(file, what: "the audit log"))
            var number = 0
            var start = 0
            data.withUnsafeBufferPointer { buffer in
                guard let base = buffer.baseAddress else { return }
                while start < buffer.count, let found = memchr(base + start, 0x0A, buffer.count - start) {
                    let index = base.distance(to: found.assumingMemoryBound(to: UInt8.self))
                    number += 1
                    out.append(Line(file: file, number: number, bytes: data[start..<index]))
                    start = index + 1
                }
            }
            if start < data.count {
                number += 1
                out.append(Line(file: file, number: number, bytes: data[start...]))
            }
        }
        return out
    }

    /// Every record, in order, from `since` on and of `op` when given; a
    /// line that is not a record is skipped (`verify` names it).
    ///
    /// With `since`, the log is read backwards from its end and no further
    /// than `slack` before `since`: records are appended in the order their
    /// writers took the log's lock, a moment after they took the time, so
    /// times run backwards only by that moment. The time is compared as text
    /// (RFC 3339 UTC of one width sorts as time), so only the records shown
    /// are decoded.
    package func records(since: Date? = nil, op: String? = nil, slack: TimeInterval = 300) throws -> [AuditRecord] {
        let opNeedle = op.map { Array("\"op\":\"\($0)\"".utf8) }
        func wanted(_ line: UnsafeRawBufferPointer) -> AuditRecord? {
            if let opNeedle, !line.contains(opNeedle) { return nil }
            guard let record = AuditRecord.decode(line), op == nil || record.op == op else { return nil }
            return record
        }
        guard let since else {
            return try lines().compactMap { line in line.bytes.withUnsafeBytes { wanted($0) } }
        }
        let cutoff = Array(AuditRecord.rfc3339(since).utf8)
        let stop = Array(AuditRecord.rfc3339(since.addingTimeInterval(-slack)).utf8)
        var found: [AuditRecord] = []
        for file in log.files().reversed() {
            let data = try FileSafety.readPrivate(file, what: "the audit log")
            let done = data.withUnsafeBytes { buffer -> Bool in
                var end = buffer.count
                while end > 0 {
                    if buffer[end - 1] == 0x0A {
                        end -= 1
                        continue
                    }
                    var start = end
                    while start > 0 && buffer[start - 1] != 0x0A { start -= 1 }
                    let line = UnsafeRawBufferPointer(rebasing: buffer[start..<end])
                    end = start
                    guard let time = Self.time(line) else { continue }
                    if Self.precedes(time, stop) { return true }
                    if !Self.precedes(time, cutoff), let record = wanted(line) { found.append(record) }
                }
                return false
            }
            if done { break }
        }
        return found.reversed()
    }

    /// Where a line's `time` value is (`{"seq":N,"time":"…`), 24 bytes.
    private static func time(_ line: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        let key = Array(",\"time\":\"".utf8)
        var index = 7
        while index + key.count + 24 <= min(line.count, 60) {
            if line[index] == 0x2C, line[index..<(index + key.count)].elementsEqual(key) {
                return UnsafeRawBufferPointer(rebasing: line[(index + key.count)..<(index + key.count + 24)])
            }
            index += 1
        }
        return nil
    }

    private static func precedes(_ time: UnsafeRawBufferPointer, _ other: [UInt8]) -> Bool {
        time.lexicographicallyPrecedes(other)
    }

    /// The records of one token fingerprint.
    package func records(withToken fingerprint: String) throws -> [AuditRecord] {
        let needle = Array("\"token\":\"\(fingerprint)\"".utf8)
        return try lines().filter { line in line.bytes.withUnsafeBytes { $0.contains(needle) } }.compactMap { AuditRecord.decode($0.bytes) }
    }

    /// What `audit verify` found: how many records, and the first that
    /// doesn't verify (nil: intact).
    package struct Verdict: Sendable {
        package var records: Int
        package var problem: String?
    }

    /// Checks every record's MAC (or, for the few kinds written without a
    /// key, that it is one of them), its number and its link to the line
    /// before, then that the log reaches the head the vault sealed. One pass
    /// over the bytes, no decoding but for records without a MAC: a million
    /// records verify in about a second.
    package func verify(key: AuditKey, head: AuditHead?) throws -> Verdict {
        if let intact = try intact(key: key, head: head) { return Verdict(records: intact, problem: nil) }
        return try firstProblem(key: key, head: head)
    }

    /// The common case, streamed over each file's mapped bytes with nothing
    /// kept: the number of records when every check passes, else `nil`
    /// (then `firstProblem` reads the log again to say what is wrong).
    private func intact(key: AuditKey, head: AuditHead?) throws -> Int? {
        var expected: UInt64 = 1
        var previousLink = Array(AuditKey.genesis.utf8)
        var headLink: [UInt8]?
        for file in log.files() {
            let data = try FileSafety.readPrivate(file, what: "the audit log")
            let fine = data.withUnsafeBytes { buffer -> Bool in
                guard let base = buffer.baseAddress else { return true }
                var start = 0
                while start < buffer.count {
                    let end = memchr(base + start, 0x0A, buffer.count - start).map { base.distance(to: UnsafeRawPointer($0)) } ?? buffer.count
                    let line = UnsafeRawBufferPointer(rebasing: buffer[start..<end])
                    start = end + 1
                    guard let seq = AuditLog.seq(of: line), seq == expected else { return false }
                    switch Self.check(line, key: key) {
                    case .keyed(let prev, let link) where prev == previousLink: previousLink = link
                    case .unkeyed(let prev, let link) where prev == previousLink && Self.mayLackKey(line): previousLink = link
                    default: return false
                    }
                    if seq == head?.seq { headLink = previousLink }
                    expected = seq + 1
                }
                return true
            }
            guard fine else { return nil }
        }
        if let head, expected - 1 < head.seq || headLink != Array(head.link.utf8) { return nil }
        return Int(expected - 1)
    }

    /// The first record that doesn't verify, and why.
    private func firstProblem(key: AuditKey, head: AuditHead?) throws -> Verdict {
        let all = try lines()
        var expected: UInt64 = 1
        var previousLink = Array(AuditKey.genesis.utf8)
        var headLink: [UInt8]?
        for index in all.indices {
            let line = all[index]
            let seq = AuditLog.seq(of: line.bytes)
            let name = "record \(seq.map(String.init) ?? "?") (\(line.place))"
            let checked = line.bytes.withUnsafeBytes { Self.check($0, key: key) }
            let parts: (prev: [UInt8], link: [UInt8])
            switch checked {
            case .notARecord: return Verdict(records: index, problem: "\(name) was changed: it is not an audit record")
            case .badMAC:
                return Verdict(records: index, problem: "\(name) was changed or forged: its MAC does not verify under this vault's audit key")
            case .unkeyed(let prev, let link):
                guard Self.mayLackKey(line.bytes) else {
                    return Verdict(records: index, problem: "\(name) was changed or forged: it has no MAC, and only a refused unlock or a migrate is written without the vault's key")
                }
                parts = (prev, link)
            case .keyed(let prev, let link): parts = (prev, link)
            }
            guard let seq else { return Verdict(records: index, problem: "\(name) was changed: it has no record number") }
            if seq != expected {
                if seq < expected {
                    if let twin = all[..<index].lastIndex(where: { $0.bytes == line.bytes }) {
                        return Verdict(records: index, problem: "\(name) is duplicated: the same record is at \(all[twin].place)")
                    }
                    return Verdict(records: index, problem: "\(name) is out of order: it comes after record \(expected - 1)")
                }
                if all[(index + 1)...].contains(where: { AuditLog.seq(of: $0.bytes) == expected }) {
                    return Verdict(records: index, problem: "\(name) is out of order: record \(expected) comes after it")
                }
                let gone = seq - expected == 1 ? "record \(expected) is" : "records \(expected) to \(seq - 1) are"
                return Verdict(records: index, problem: "\(name): \(gone) missing before it")
            }
            guard parts.prev == previousLink else {
                return Verdict(records: index, problem: "\(name) does not follow the line before it: a record before it was changed, replaced or reordered")
            }
            previousLink = parts.link
            if seq == head?.seq { headLink = parts.link }
            expected = seq + 1
        }
        let last = expected - 1
        if let head {
            if last < head.seq {
                return Verdict(records: all.count, problem: "the log was cut back: the vault's last write sealed record \(head.seq) as this log's head, but the log ends at record \(last)")
            }
            if let headLink, headLink != Array(head.link.utf8), let index = all.firstIndex(where: { AuditLog.seq(of: $0.bytes) == head.seq }) {
                return Verdict(records: all.count, problem: "record \(head.seq) (\(all[index].place)) is not the record the vault's last write sealed as this log's head")
            }
        }
        return Verdict(records: all.count, problem: nil)
    }

    private enum Checked {
        case notARecord, badMAC
        case keyed(prev: [UInt8], link: [UInt8])
        case unkeyed(prev: [UInt8], link: [UInt8])
    }

    /// A line's shape, MAC, `prev` and link, by fixed offsets from its end:
    /// `…,"prev":"<32 hex>","mac":"<64 hex>"}` or `…,"mac":"none"}`.
    private static func check(_ line: UnsafeRawBufferPointer, key: AuditKey) -> Checked {
        let count = line.count
        guard count > 100, line[0] == 0x7B, line[count - 1] == 0x7D, line[count - 2] == 0x22 else { return .notARecord }
        func matches(_ text: StaticString, at offset: Int) -> Bool {
            offset >= 0 && offset + text.utf8CodeUnitCount <= count
                && memcmp(line.baseAddress! + offset, text.utf8Start, text.utf8CodeUnitCount) == 0
        }
        let prefixEnd: Int
        let keyed: Bool
        if matches(",\"mac\":\"none\"}", at: count - 14) {
            prefixEnd = count - 14
            keyed = false
        } else {
            prefixEnd = count - 2 - 64 - 8
            guard matches(",\"mac\":\"", at: prefixEnd) else { return .notARecord }
            keyed = true
        }
        let prevStart = prefixEnd - 33
        guard matches(",\"prev\":\"", at: prevStart - 9), line[prefixEnd - 1] == 0x22 else { return .notARecord }
        let prefix = UnsafeRawBufferPointer(rebasing: line[0..<prefixEnd])
        if keyed {
            let mac = key.macHex(prefix)
            guard memcmp(line.baseAddress! + prefixEnd + 8, mac, 64) == 0 else { return .badMAC }
        }
        let prev = Array(line[prevStart..<(prefixEnd - 1)])
        let link = AuditKey.linkHex(line)
        return keyed ? .keyed(prev: prev, link: link) : .unkeyed(prev: prev, link: link)
    }

    /// Only a refused unlock and a `migrate` happen without the key.
    private static func mayLackKey(_ line: some Collection<UInt8>) -> Bool {
        guard let record = AuditRecord.decode(line) else { return false }
        return record.event == "unlock-refused" || (record.event == "change" && record.op == "migrate")
    }
}


extension UnsafeRawBufferPointer {
    /// Whether `needle` occurs in these bytes (`memmem`).
    fileprivate func contains(_ needle: [UInt8]) -> Bool {
        guard let base = baseAddress, !needle.isEmpty, needle.count <= count else { return false }
        var offset = 0
        while offset + needle.count <= count, let found = memchr(base + offset, Int32(needle[0]), count - needle.count + 1 - offset) {
            let at = base.distance(to: UnsafeRawPointer(found))
            if memcmp(found, needle, needle.count) == 0 { return true }
            offset = at + 1
        }
        return false
    }
}

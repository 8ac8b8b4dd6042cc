#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
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
            for index in data.indices where data[index] == 0x0A {
                number += 1
                out.append(Line(file: file, number: number, bytes: data[start..<index]))
                start = index + 1
            }
            if start < data.count {
                number += 1
                out.append(Line(file: file, number: number, bytes: data[start...]))
            }
        }
        return out
    }

    /// Every record, in order, from `since` on and of `op` when given; a
    /// line that is not a record is skipped (`verify` names it). The time is
    /// compared as text first (RFC 3339 UTC of one width sorts as time), so
    /// only the records shown are decoded.
    package func records(since: Date? = nil, op: String? = nil) throws -> [AuditRecord] {
        let cutoff = since.map { Array(AuditRecord.rfc3339($0).utf8) }
        let timeKey = Array(",\"time\":\"".utf8)
        let opNeedle = op.map { Array("\"op\":\"\($0)\"".utf8) }
        return try lines().compactMap { line in
            if let cutoff {
                guard let start = line.bytes.firstRange(of: timeKey)?.upperBound, line.bytes.endIndex - start >= cutoff.count,
                    !line.bytes[start..<(start + cutoff.count)].lexicographicallyPrecedes(cutoff)
                else { return nil }
            }
            if let opNeedle, line.bytes.firstRange(of: opNeedle) == nil { return nil }
            guard let record = AuditRecord.decode(line.bytes), op == nil || record.op == op else { return nil }
            return record
        }
    }

    /// The records of one token fingerprint.
    package func records(withToken fingerprint: String) throws -> [AuditRecord] {
        let needle = Array("\"token\":\"\(fingerprint)\"".utf8)
        return try lines().filter { $0.bytes.firstRange(of: needle) != nil }.compactMap { AuditRecord.decode($0.bytes) }
    }

    /// What `audit verify` found: how many records, and the first that
    /// doesn't verify (nil: intact).
    package struct Verdict: Sendable {
        package var records: Int
        package var problem: String?
    }

    /// Checks every record's MAC (or, for the few kinds written without a
    /// key, that it is one of them), its number and its link to the line
    /// before, then that the log reaches the head the vault sealed.
    package func verify(key: AuditKey, head: AuditHead?) throws -> Verdict {
        let all = try lines()
        let seqs = all.map { AuditLog.seq(of: $0.bytes) }
        var expected: UInt64 = 1
        var previousLink = AuditKey.genesis
        for (index, line) in all.enumerated() {
            let name = "record \(seqs[index].map(String.init) ?? "?") (\(line.place))"
            guard let parts = Self.split(line.bytes) else {
                return Verdict(records: index, problem: "\(name) was changed: it is not an audit record")
            }
            if parts.mac == "none" {
                guard Self.mayLackKey(line.bytes) else {
                    return Verdict(records: index, problem: "\(name) was changed or forged: it has no MAC, and only a refused unlock or a migrate is written without the vault's key")
                }
            } else {
                guard key.mac(Array(parts.prefix)) == parts.mac else {
                    return Verdict(records: index, problem: "\(name) was changed or forged: its MAC does not verify under this vault's audit key")
                }
            }
            guard let seq = seqs[index] else {
                return Verdict(records: index, problem: "\(name) was changed: it has no record number")
            }
            if seq != expected {
                if seq < expected {
                    if let twin = all[..<index].lastIndex(where: { $0.bytes == line.bytes }) {
                        return Verdict(records: index, problem: "\(name) is duplicated: the same record is at \(all[twin].place)")
                    }
                    return Verdict(records: index, problem: "\(name) is out of order: it comes after record \(expected - 1)")
                }
                if seqs[(index + 1)...].contains(expected) {
                    return Verdict(records: index, problem: "\(name) is out of order: record \(expected) comes after it")
                }
                let gone = seq - expected == 1 ? "record \(expected) is" : "records \(expected) to \(seq - 1) are"
                return Verdict(records: index, problem: "\(name): \(gone) missing before it")
            }
            guard Self.prev(parts.prefix) == previousLink else {
                return Verdict(records: index, problem: "\(name) does not follow the line before it: a record before it was changed, replaced or reordered")
            }
            previousLink = AuditKey.link(Array(line.bytes))
            expected = seq + 1
        }
        let last = expected - 1
        if let head {
            if last < head.seq {
                return Verdict(records: all.count, problem: "the log was cut back: the vault's last write sealed record \(head.seq) as this log's head, but the log ends at record \(last)")
            }
            if let index = seqs.firstIndex(of: head.seq), AuditKey.link(Array(all[index].bytes)) != head.link {
                return Verdict(records: all.count, problem: "record \(head.seq) (\(all[index].place)) is not the record the vault's last write sealed as this log's head")
            }
        }
        return Verdict(records: all.count, problem: nil)
    }

    /// A line's bytes before `,"mac":"` and the MAC; nil when it isn't shaped as a record.
    private static func split(_ line: ArraySlice<UInt8>) -> (prefix: ArraySlice<UInt8>, mac: String)? {
        let marker = Array(",\"mac\":\"".utf8)
        guard line.first == 0x7B, line.count > marker.count + 2, line.suffix(2).elementsEqual([0x22, 0x7D]),
            let range = line.lastRange(of: marker)
        else { return nil }
        let mac = line[range.upperBound..<(line.endIndex - 2)]
        guard mac.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7A) }) else { return nil }
        return (line[..<range.lowerBound], String(decoding: mac, as: UTF8.self))
    }

    private static func prev(_ prefix: ArraySlice<UInt8>) -> String? {
        let marker = Array(",\"prev\":\"".utf8)
        guard let range = prefix.lastRange(of: marker), prefix.endIndex - range.upperBound == 33 else { return nil }
        return String(decoding: prefix[range.upperBound..<(prefix.endIndex - 1)], as: UTF8.self)
    }

    /// Only a refused unlock and a `migrate` happen without the key.
    private static func mayLackKey(_ line: ArraySlice<UInt8>) -> Bool {
        guard let record = AuditRecord.decode(line) else { return false }
        return record.event == "unlock-refused" || (record.event == "change" && record.op == "migrate")
    }
}

extension Collection where Element == UInt8, Index == Int {
    /// The last place `needle` occurs.
    fileprivate func lastRange(of needle: [UInt8]) -> Range<Int>? {
        guard count >= needle.count else { return nil }
        var start = endIndex - needle.count
        while start >= startIndex {
            if self[start..<(start + needle.count)].elementsEqual(needle) { return start..<(start + needle.count) }
            start -= 1
        }
        return nil
    }
}

import Foundation
import Testing
@testable import TallyfyVaultCore

/// The audit chain at the library level: large logs (speed), rotation.
@Suite struct AuditChainTests {
    let key = AuditKey(root: Array(repeating: 7, count: 32))

    private func folder() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tv-audit-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        return path
    }

    private func record(_ seq: UInt64, time: String, op: String = "exec") -> AuditRecord {
        AuditRecord(seq: seq, time: time, op: op, event: "hand-out", profile: "default", user: nil, token: String(repeating: "a", count: 32),
            change: nil, result: "ok", uid: 1000, pid: 4242, ppid: 4100, parent: "bash", tty: nil, ci: nil, host: "bench", prev: "", mac: "")
    }

    /// `count` records a second apart up to now, chained as `AuditTrail` chains them, in one write.
    /// Returns the first record's time.
    @discardableResult
    private func writeLog(_ path: String, count: Int) throws -> Date {
        var out = [UInt8]()
        out.reserveCapacity(count * 330)
        var link = AuditKey.genesis
        let start = Date().addingTimeInterval(-Double(count))
        for index in 0..<count {
            var fields = record(UInt64(index + 1), time: AuditRecord.rfc3339(start.addingTimeInterval(Double(index))), op: index % 10 == 0 ? "token" : "exec")
            fields.prev = link
            let prefix = fields.prefixBytes()
            let line = AuditRecord.line(prefix: prefix, mac: key.mac(prefix))
            link = AuditKey.link(line)
            out += line
            out.append(0x0A)
        }
        FileManager.default.createFile(atPath: path, contents: Data(out), attributes: [.posixPermissions: 0o600])
        return start
    }

    /// docs/operations.md "Audit log" targets, on 1 million records: verify ≤ 5 s, show
    /// --since 1h ≤ 0.5 s. `TALLYFY_VAULT_AUDIT_BENCH_RECORDS=1000000` runs
    /// that size (the suite's default is small, for speed); the times are printed.
    @Test func aLargeLogVerifiesAndFiltersQuickly() throws {
        let count = Int(ProcessInfo.processInfo.environment["TALLYFY_VAULT_AUDIT_BENCH_RECORDS"] ?? "") ?? 20_000
        let path = try folder() + "/bench.log"
        let start = try writeLog(path, count: count)
        let reader = AuditReader(log: AuditLog(path: path))
        let clock = ContinuousClock()
        var verdict: AuditReader.Verdict?
        let verifying = try clock.measure { verdict = try reader.verify(key: key, head: nil) }
        #expect(verdict?.records == count && verdict?.problem == nil, "\(String(describing: verdict))")
        var shown: [AuditRecord] = []
        // The last hour of the log as written (not of the clock now: on a
        // loaded machine writing and verifying took over 10 s).
        let hourBeforeTheLast = start.addingTimeInterval(Double(count) - 3600)
        let showing = try clock.measure { shown = try reader.records(since: hourBeforeTheLast) }
        #expect((3599...3601).contains(shown.count) || shown.count == count, "\(shown.count)")
        #expect(try reader.records(op: "token").count == (count + 9) / 10)
        print("audit log of \(count) records: verify \(verifying), show --since 1h \(showing) (\(shown.count) records)")
    }

    /// Rotation renames the log and goes on with the same chain: a log of
    /// several files verifies as one.
    @Test func rotationKeepsOneChainAcrossFiles() throws {
        let path = try folder() + "/rotating.log"
        var log = AuditLog(path: path)
        log.maxBytes = 2_000
        for _ in 0..<40 {
            try log.append { tail in
                var fields = record(tail.seq + 1, time: AuditRecord.rfc3339(Date()))
                fields.prev = tail.link
                let prefix = fields.prefixBytes()
                return AuditRecord.line(prefix: prefix, mac: key.mac(prefix))
            }
        }
        let files = log.files()
        #expect(files.count > 3 && files.last == path, "\(files)")
        let verdict = try AuditReader(log: log).verify(key: key, head: nil)
        #expect(verdict.records == 40 && verdict.problem == nil, "\(verdict)")
        // The oldest file gone: its records are reported missing.
        try FileManager.default.removeItem(atPath: files[0])
        let cut = try AuditReader(log: log).verify(key: key, head: nil)
        #expect(cut.problem?.contains("missing before it") == true, "\(String(describing: cut.problem))")
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// One audit record: one JSON line in the log (SECURITY.md, "Audit log").
///
/// The line is written field by field in a fixed order, so its bytes are
/// what the MAC covers: everything before `,"mac":`, which includes `prev`,
/// the link hash of the line before. A record written without the vault's
/// key (a refused unlock, a `migrate`, which has none) carries
/// `"mac":"none"`; the next keyed record still covers it through `prev`.
package struct AuditRecord: Codable, Sendable, Equatable {
    /// Position in this log's chain, from 1, continued across rotated files.
    package var seq: UInt64
    /// RFC 3339 UTC with milliseconds.
    package var time: String
    /// The command as typed (`exec`, `token`, `credentials set`, `agent`, …).
    package var op: String
    /// `hand-out`, `change`, `unlock-refused`, `rollback-refused`,
    /// `rollback-accepted`, `failed`.
    package var event: String
    package var profile: String?
    package var user: String?
    /// A keyed fingerprint of the token handed out or sealed (`AuditKey`).
    package var token: String?
    /// What a change was when the command alone doesn't say (`renewal`).
    package var change: String?
    /// `ok`, or the exit status and reason.
    package var result: String
    package var uid: UInt32
    package var pid: Int32
    package var ppid: Int32
    package var parent: String?
    package var tty: String?
    package var ci: String?
    package var host: String
    package var prev: String
    package var mac: String

    /// The line's bytes up to its `mac` field.
    func prefixBytes() -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(400)
        func key(_ name: String) {
            out.append(contentsOf: out.isEmpty ? Array("{\"".utf8) : Array(",\"".utf8))
            out.append(contentsOf: Array(name.utf8))
            out.append(contentsOf: Array("\":".utf8))
        }
        func string(_ name: String, _ value: String?) {
            guard let value else { return }
            key(name)
            Self.appendQuoted(value, to: &out)
        }
        func number(_ name: String, _ value: String) {
            key(name)
            out.append(contentsOf: Array(value.utf8))
        }
        number("seq", String(seq))
        string("time", time)
        string("op", op)
        string("event", event)
        string("profile", profile)
        string("user", user)
        string("token", token)
        string("change", change)
        string("result", result)
        number("uid", String(uid))
        number("pid", String(pid))
        number("ppid", String(ppid))
        string("parent", parent)
        string("tty", tty)
        string("ci", ci)
        string("host", host)
        string("prev", prev)
        return out
    }

    /// The whole line, without its newline, for `mac`.
    static func line(prefix: [UInt8], mac: String) -> [UInt8] {
        prefix + Array(",\"mac\":\"\(mac)\"}".utf8)
    }

    /// JSON string escaping: quotes, backslashes and control characters.
    private static func appendQuoted(_ value: String, to out: inout [UInt8]) {
        out.append(0x22)
        for byte in value.utf8 {
            switch byte {
            case 0x22: out.append(contentsOf: [0x5C, 0x22])
            case 0x5C: out.append(contentsOf: [0x5C, 0x5C])
            case 0..<0x20, 0x7F:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 15)]])
            default: out.append(byte)
            }
        }
        out.append(0x22)
    }

    /// RFC 3339 UTC with milliseconds, from the real clock.
    static func now() -> String {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return rfc3339(seconds: spec.tv_sec, milliseconds: Int32(spec.tv_nsec / 1_000_000))
    }

    /// `date` as a record's `time` writes it.
    static func rfc3339(_ date: Date) -> String {
        let whole = date.timeIntervalSince1970.rounded(.down)
        return rfc3339(seconds: Int(whole), milliseconds: Int32(((date.timeIntervalSince1970 - whole) * 1000).rounded(.down)))
    }

    private static func rfc3339(seconds whole: Int, milliseconds: Int32) -> String {
        RFC3339.text(seconds: whole, milliseconds: milliseconds)
    }

    /// The record a line holds, `nil` when it is not one.
    package static func decode(_ line: some Collection<UInt8>) -> AuditRecord? {
        try? JSONDecoder().decode(AuditRecord.self, from: Data(line))
    }
}

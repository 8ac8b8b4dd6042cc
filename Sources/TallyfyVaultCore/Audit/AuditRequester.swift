#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Who asked, as an audit record names them: the process, its user, its
/// parent and the parent's command name, and its controlling terminal.
/// Read from `/proc` (a few small reads, no lookups by name), so the
/// agent can name a client it knows only by its pid (`SO_PEERCRED`).
package struct AuditRequester: Sendable, Equatable {
    package var uid: UInt32
    package var pid: Int32
    package var ppid: Int32
    /// The parent's command name (`/proc/PPID/comm`), when it could be read.
    package var parent: String?
    /// The controlling terminal (`/dev/pts/N`), when there is one.
    package var tty: String?

    /// This process.
    package static func thisProcess() -> AuditRequester {
        requester(pid: getpid(), uid: UInt32(getuid()))
    }

    /// Another process (an agent's client), by what the kernel said of it.
    package static func peer(pid: Int32, uid: UInt32) -> AuditRequester {
        requester(pid: pid, uid: uid)
    }

    private static func requester(pid: Int32, uid: UInt32) -> AuditRequester {
        // /proc/PID/stat: "PID (COMM) STATE PPID PGRP SESSION TTY_NR …"; COMM may hold spaces and parentheses.
        var ppid: Int32 = pid == getpid() ? getppid() : 0
        var tty: String?
        if let stat = readSmall("/proc/\(pid)/stat"), let close = stat.lastIndex(of: UInt8(ascii: ")")) {
            let fields = stat[(close + 1)...].split(separator: UInt8(ascii: " "))
            if fields.count > 4 {
                ppid = Int32(String(decoding: fields[1], as: UTF8.self)) ?? ppid
                tty = ttyName(Int(String(decoding: fields[4], as: UTF8.self)) ?? 0)
            }
        }
        let parent = ppid > 0 ? readSmall("/proc/\(ppid)/comm").map { String(decoding: $0.filter { $0 != 0x0A }, as: UTF8.self) } : nil
        return AuditRequester(uid: uid, pid: pid, ppid: ppid, parent: parent, tty: tty)
    }

    /// The device name of a `tty_nr` (major 136–143: pseudo-terminals; 4: consoles).
    private static func ttyName(_ number: Int) -> String? {
        guard number != 0 else { return nil }
        let major = (number >> 8) & 0xfff
        let minor = (number & 0xff) | ((number >> 12) & 0xfff00)
        switch major {
        case 136...143: return "/dev/pts/\((major - 136) * 256 + minor)"
        case 4: return minor < 64 ? "/dev/tty\(minor)" : "/dev/ttyS\(minor - 64)"
        default: return "tty(\(major),\(minor))"
        }
    }

    /// At most 512 bytes of a small `/proc` file.
    private static func readSmall(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, 512) }
        guard count > 0 else { return nil }
        return Array(buffer[0..<count])
    }

    /// This machine's name, read once.
    static let host: String = {
        var name = [CChar](repeating: 0, count: 256)
        guard gethostname(&name, 255) == 0 else { return "unknown" }
        return String(cString: name)
    }()

    /// A hint that the process runs in CI, from the variables CI systems set.
    static func ciHint(_ environment: [String: String]) -> String? {
        if environment["GITHUB_ACTIONS"] == "true" { return "github-actions" }
        if let gitlab = environment["GITLAB_CI"], !gitlab.isEmpty { return "gitlab-ci" }
        if let ci = environment["CI"], !ci.isEmpty, ci != "false", ci != "0" { return "ci" }
        return nil
    }
}

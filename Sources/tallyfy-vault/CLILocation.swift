#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Where the full CLI is, found from this launcher's own resolved path and
/// never from argv[0] or the current folder (a bare `tallyfy-vault` found on
/// PATH has no folder in argv[0], and whoever controls the current folder
/// must not get their `./tallyfy-vault-cli` run).
///
/// Two layouts, in this order:
/// - installed (`tools/install`): `PREFIX/bin/tallyfy-vault` and
///   `PREFIX/libexec/tallyfy-vault/tallyfy-vault-cli`, as git keeps its helpers;
/// - a build folder: `tallyfy-vault-cli` beside `tallyfy-vault`.
enum CLILocation {
    case found(String)
    case notFound(expected: [String])
    case unsafe(String, reason: String)
    case unknownLocation

    static let cliName = "tallyfy-vault-cli"

    static func find() -> CLILocation {
        guard let me = resolvedExecutable() else { return .unknownLocation }
        let folder = parentFolder(of: me)
        let parent = parentFolder(of: folder)
        let candidates = [
            parent + "/libexec/tallyfy-vault/" + cliName,
            folder + "/" + cliName,
        ]
        for candidate in candidates {
            var info = stat()
            guard stat(candidate, &info) == 0 else { continue }
            if let reason = unsafeReason(info) { return .unsafe(candidate, reason: reason) }
            return .found(candidate)
        }
        return .notFound(expected: candidates)
    }

    /// `/a/b/c` → `/a/b`; `/a` → `` (so `parent + "/libexec"` stays absolute).
    private static func parentFolder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return String(path[..<slash])
    }

    /// The real path of this executable, symlinks resolved.
    private static func resolvedExecutable() -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0, buffer[0] == CChar(UInt8(ascii: "/")) else { return nil }
        return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// An executable another user could have replaced is not run: it must be
    /// a regular file owned by root or by us, writable by no one else.
    private static func unsafeReason(_ info: stat) -> String? {
        if (info.st_mode & S_IFMT) != S_IFREG { return "it is not a regular file" }
        if info.st_uid != 0 && info.st_uid != geteuid() { return "it belongs to another user (uid \(info.st_uid))" }
        if info.st_mode & (S_IWGRP | S_IWOTH) != 0 { return "other users can write to it" }
        return nil
    }
}

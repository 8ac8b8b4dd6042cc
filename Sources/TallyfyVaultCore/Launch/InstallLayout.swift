#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Where the launcher (`tallyfy-vault`) and the full CLI
/// (`tallyfy-vault-cli`) sit relative to each other: one resolver for the
/// launcher, which runs the CLI it finds, and for `doctor`, which reports on
/// the same layouts.
///
/// Two layouts, in this order:
/// - installed (`tools/install`): `PREFIX/bin/tallyfy-vault` and
///   `PREFIX/libexec/tallyfy-vault/tallyfy-vault-cli`, as git keeps its helpers;
/// - a build folder: `tallyfy-vault-cli` beside `tallyfy-vault`.
///
/// A CLI is run only when no other user could have put it there: the file
/// (checked with `lstat`; a symbolic link must itself be owned by root or
/// by us, and point to a file that passes) is a regular file owned by root
/// or by us that no one else can write, and its folder, and the folders
/// above it up to the prefix, are owned by root or by us and writable by no
/// one else (a folder others can write lets them swap the file).
package enum InstallLayout {
    package static let launcherName = "tallyfy-vault"
    package static let cliName = "tallyfy-vault-cli"

    /// What the launcher at `launcher` (its resolved path) would run.
    package enum Lookup: Equatable, Sendable {
        case found(String)
        case notFound(expected: [String])
        case unsafe(String, reason: String)
    }

    /// The CLI candidates for a launcher, each with the folders that must be
    /// closed to others (the CLI's folder up to the prefix).
    static func candidates(launcher: String) -> [(cli: String, folders: [String])] {
        let folder = parentFolder(of: launcher)
        let prefix = parentFolder(of: folder)
        let libexec = prefix + "/libexec/tallyfy-vault"
        return [
            (libexec + "/" + cliName, [libexec, prefix + "/libexec", prefix.isEmpty ? "/" : prefix]),
            (folder + "/" + cliName, [folder.isEmpty ? "/" : folder]),
        ]
    }

    /// The CLI the launcher at `launcher` runs: the first candidate that
    /// exists, refused when it or its folders are unsafe.
    package static func findCLI(launcher: String) -> Lookup {
        let candidates = candidates(launcher: launcher)
        for (cli, folders) in candidates {
            var info = stat()
            guard lstat(cli, &info) == 0 else { continue }
            if let reason = unsafeFileReason(cli, info) { return .unsafe(cli, reason: reason) }
            for folder in folders {
                if let reason = unsafeFolderReason(folder) { return .unsafe(folder, reason: reason) }
            }
            return .found(cli)
        }
        return .notFound(expected: candidates.map(\.cli))
    }

    /// The launcher that goes with the CLI at `cli` (its resolved path): in
    /// `PREFIX/bin` for a CLI in `PREFIX/libexec/tallyfy-vault`, else beside it.
    package static func launcher(forCLI cli: String) -> String {
        let folder = parentFolder(of: cli)
        if folder.hasSuffix("/libexec/tallyfy-vault") {
            return parentFolder(of: parentFolder(of: folder)) + "/bin/" + launcherName
        }
        return folder + "/" + launcherName
    }

    /// `/a/b/c` → `/a/b`; `/a` → `` (so `parent + "/libexec"` stays absolute).
    static func parentFolder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return String(path[..<slash])
    }

    private static func unsafeFileReason(_ path: String, _ linkInfo: stat) -> String? {
        var info = linkInfo
        if linkInfo.st_mode & S_IFMT == S_IFLNK {
            if !isOursOrRoot(linkInfo.st_uid) { return "it is a symbolic link that belongs to another user (uid \(linkInfo.st_uid))" }
            guard stat(path, &info) == 0 else { return "it is a symbolic link to nothing" }
        }
        if info.st_mode & S_IFMT != S_IFREG { return "it is not a regular file" }
        if !isOursOrRoot(info.st_uid) { return "it belongs to another user (uid \(info.st_uid))" }
        if info.st_mode & (S_IWGRP | S_IWOTH) != 0 { return "other users can write to it" }
        return nil
    }

    private static func unsafeFolderReason(_ folder: String) -> String? {
        var info = stat()
        guard stat(folder, &info) == 0 else { return "it cannot be inspected" }
        if info.st_mode & S_IFMT != S_IFDIR { return "it is not a folder" }
        if !isOursOrRoot(info.st_uid) { return "the folder belongs to another user (uid \(info.st_uid)), who could replace the CLI in it" }
        if info.st_mode & (S_IWGRP | S_IWOTH) != 0 {
            return "other users can write to the folder (mode \(String(info.st_mode & 0o7777, radix: 8))) and so replace the CLI in it"
        }
        return nil
    }

    private static func isOursOrRoot(_ uid: uid_t) -> Bool { uid == 0 || uid == geteuid() }
}

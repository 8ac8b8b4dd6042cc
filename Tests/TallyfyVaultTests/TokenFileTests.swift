import Foundation
import Testing

@testable import TallyfyVaultCore

#if canImport(Glibc)
    import Glibc
#endif

/// The private token file of `exec --keep-fresh`: where it lives, who may
/// read it, atomic replacement, and folders left by killed supervisors.
@Suite struct TokenFileTests {
    /// A private stand-in for `$XDG_RUNTIME_DIR`, removed afterwards.
    final class Runtime {
        let path: String
        init() throws {
            path = FileManager.default.temporaryDirectory.appendingPathComponent("tv-run-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        }
        deinit { try? FileManager.default.removeItem(atPath: path) }
        var environment: [String: String] { ["XDG_RUNTIME_DIR": path] }
        var base: String { path + "/tallyfy-vault" }
    }

    private func mode(_ path: String) -> mode_t? {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & 0o777 : nil
    }

    @Test func theFileIsPrivateAndReplacedWhole() throws {
        let runtime = try Runtime()
        let file = try TokenFile.create(environment: runtime.environment)
        defer { file.remove() }
        #expect(file.path.hasPrefix(runtime.base + "/exec-\(getpid())-"))
        #expect(mode(runtime.base) == 0o700 && mode(file.folder) == 0o700)
        try file.write("first.token.value")
        try file.write("second.token.value")
        #expect(try String(contentsOfFile: file.path, encoding: .utf8) == "second.token.value")
        #expect(mode(file.path) == 0o600)
        #expect(try FileManager.default.contentsOfDirectory(atPath: file.folder) == [TokenFile.fileName], "a temporary file was left")
        file.remove()
        #expect(!FileManager.default.fileExists(atPath: file.folder))
    }

    @Test func withoutXDGRuntimeDirTheFolderIsInTmp() throws {
        let base = try TokenFile.runtimeFolder(environment: ["XDG_RUNTIME_DIR": "relative/path"])
        #expect(base == "/tmp/tallyfy-vault-\(getuid())")
        #expect(mode(base) == 0o700)
    }

    @Test func anOpenOrForeignFolderIsRefused() throws {
        let runtime = try Runtime()
        try FileManager.default.createDirectory(atPath: runtime.base, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        chmod(runtime.base, 0o755)
        #expect(throws: VaultError.self) { try TokenFile.create(environment: runtime.environment) }
        try FileManager.default.removeItem(atPath: runtime.base)
        // A symbolic link to a private folder is still refused: it could be swapped.
        let elsewhere = runtime.path + "/elsewhere"
        try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        try FileManager.default.createSymbolicLink(atPath: runtime.base, withDestinationPath: elsewhere)
        do {
            _ = try TokenFile.create(environment: runtime.environment)
            Issue.record("a symbolic link was accepted as the runtime folder")
        } catch let error as VaultError {
            #expect(error.kind == .refused)
        }
    }

    @Test func foldersOfDeadSupervisorsAreRemovedAndOthersKept() throws {
        let runtime = try Runtime()
        _ = try TokenFile.runtimeFolder(environment: runtime.environment)
        let ended = Process()
        ended.executableURL = URL(fileURLWithPath: "/bin/true")
        try ended.run()
        ended.waitUntilExit()
        let ownStart = try #require(TokenFile.startTime(of: getpid()))
        let parent = getppid()
        let parentStart = try #require(TokenFile.startTime(of: parent))
        let dead = runtime.base + "/exec-\(ended.processIdentifier)-1"
        let reused = runtime.base + "/exec-\(getpid())-\(ownStart + 1)"  // our PID, another start: a reused PID
        let alive = runtime.base + "/exec-\(parent)-\(parentStart)"
        let other = runtime.base + "/agent.sock.d"
        for folder in [dead, reused, alive, other] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            _ = FileManager.default.createFile(atPath: folder + "/token", contents: Data("x".utf8))
        }
        let file = try TokenFile.create(environment: runtime.environment)
        defer { file.remove() }
        let left = Set(try FileManager.default.contentsOfDirectory(atPath: runtime.base).map { runtime.base + "/" + $0 })
        #expect(left == [alive, other, file.folder])
    }

    /// Issue 24 F13: without XDG_RUNTIME_DIR, a squatted shared folder in
    /// the temporary folder (another owner, open, a link) is refused and a
    /// fresh private one (mkdtemp) is used instead, with a note saying so.
    @Test func aSquattedTmpFolderIsRefusedAndAFreshOneUsed() throws {
        let tmp = try Runtime()  // stands in for /tmp
        let shared = RuntimeFolder.sharedPath(environment: [:], tmp: tmp.path)
        #expect(shared == tmp.path + "/tallyfy-vault-\(geteuid())")
        let elsewhere = tmp.path + "/elsewhere"
        try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        var squats: [(String, () throws -> Void)] = [
            ("open to others", { try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: false)
                chmod(shared, 0o777) }),
            ("a link", { try FileManager.default.createSymbolicLink(atPath: shared, withDestinationPath: elsewhere) }),
            ("a file", { _ = FileManager.default.createFile(atPath: shared, contents: Data()) }),
        ]
        if geteuid() == 0 {
            squats.append(("another user's", { try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: false,
                attributes: [.posixPermissions: 0o700]); chown(shared, 65534, 65534) }))
        }
        for (what, squat) in squats {
            try squat()
            let (path, note) = try RuntimeFolder.prepare(environment: [:], tmp: tmp.path)
            #expect(path != shared && path.hasPrefix(shared + "."), "\(what): \(path)")
            #expect(mode(path) == 0o700, "\(what)")
            #expect(note?.contains(shared) == true && note?.contains(path) == true, "\(what): \(note ?? "no note")")
            // Under XDG_RUNTIME_DIR (the user's own) the same is refused, 77, with no fallback.
            let runtime = try Runtime()
            try FileManager.default.createDirectory(atPath: runtime.base, withIntermediateDirectories: false)
            chmod(runtime.base, 0o777)
            let error = try #require(throws: VaultError.self) { try RuntimeFolder.prepare(environment: runtime.environment, tmp: tmp.path) }
            #expect(error.exitStatus == 77)
            try FileManager.default.removeItem(atPath: path)
            try FileManager.default.removeItem(atPath: shared)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: elsewhere).isEmpty)
        // Unsquatted, the shared folder is made and used.
        let unsquatted = try RuntimeFolder.prepare(environment: [:], tmp: tmp.path)
        #expect(unsquatted.path == shared && unsquatted.fallback == nil)
    }

    /// Issue 24 F14: a link named like a dead supervisor's folder is removed
    /// as a link; the files of the folder it points to survive.
    @Test func aPlantedLinkIsNeverFollowed() throws {
        let runtime = try Runtime()
        _ = try TokenFile.runtimeFolder(environment: runtime.environment)
        let victim = runtime.path + "/victim"
        try FileManager.default.createDirectory(atPath: victim, withIntermediateDirectories: false)
        for name in ["a", "b", "token"] {
            #expect(FileManager.default.createFile(atPath: victim + "/" + name, contents: Data("keep".utf8)))
        }
        let planted = runtime.base + "/exec-999999999-1"  // no such PID: stale by its name
        try FileManager.default.createSymbolicLink(atPath: planted, withDestinationPath: victim)
        // And a real stale folder holding a link to a file elsewhere: the link goes, the file stays.
        let stale = runtime.base + "/exec-999999998-1"
        try FileManager.default.createDirectory(atPath: stale, withIntermediateDirectories: false)
        try FileManager.default.createSymbolicLink(atPath: stale + "/token", withDestinationPath: victim + "/a")
        let file = try TokenFile.create(environment: runtime.environment)
        defer { file.remove() }
        #expect(try FileManager.default.contentsOfDirectory(atPath: victim).sorted() == ["a", "b", "token"])
        #expect(try String(contentsOfFile: victim + "/a", encoding: .utf8) == "keep")
        #expect(try FileManager.default.contentsOfDirectory(atPath: runtime.base) == [(file.folder as NSString).lastPathComponent])
    }
}

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
}

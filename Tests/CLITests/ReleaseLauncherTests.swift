import Foundation
import Testing

/// The launcher as it is released: one static executable (Package.swift
/// links it with `-static-executable` in release builds only, so every other
/// suite runs a dynamically linked debug launcher). tools/test builds it
/// first (`tools/release-launcher`); a missing one fails here, never skips.
@Suite struct ReleaseLauncherTests {
    static let launcher = LibraryExampleTests.packageRoot.appendingPathComponent(".build-release/release/tallyfy-vault")

    @Test func theReleasedLauncherIsStaticAndServesAsTheDebugOneDoes() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.launcher.path),
            "no release launcher at \(Self.launcher.path): run tools/release-launcher (tools/test does)")
        #expect(try !Self.hasProgramInterpreter(Self.launcher.path), "the released launcher asks for a dynamic loader")

        let world = try await LoggedIn.start()
        defer { _ = world.emulator.stop() }
        let sandbox = world.sandbox
        let expected = try sandbox.ok(["exec", "--", "printenv", "TALLYFY_TOKEN"]).stdout
        let environment = sandbox.environment
        /// The released launcher in `folder`, with this build's CLI beside it or without one.
        func released(in folder: String, withCLI: Bool) throws -> URL {
            let launcher = try BuildProducts.copy(into: sandbox.root.appendingPathComponent(folder), withCLI: withCLI)
            try FileManager.default.removeItem(at: launcher)
            try FileManager.default.copyItem(at: Self.launcher, to: launcher)
            return launcher
        }

        // The fast path, alone (no CLI to hand over to, so nothing else can
        // have served it): read, unlock, decide, execve.
        let alone = try released(in: "alone", withCLI: false)
        let fresh = try runProcess(alone, ["exec", "--", "printenv", "TALLYFY_TOKEN"], environment: environment)
        let sameToken = fresh.stdout == expected  // a Bool: a failed expectation prints its operands, and these are tokens
        #expect(fresh.status == 0 && sameToken, "\(fresh.brief)")
        // Without HOME it looks nothing up through NSS: it hands over, and
        // with no CLI beside it, fails closed.
        let noHome = try runProcess(alone, ["exec", "--", "true"], environment: environment.filter { $0.key != "HOME" })
        #expect(noHome.status != 0 && noHome.stderr.contains("tallyfy-vault-cli"), "\(noHome.brief)")

        // Installed as tools/install lays it out, beside this build's CLI.
        let installed = try released(in: "installed", withCLI: true)
        func run(_ arguments: [String]) throws -> RunResult {
            try runProcess(installed, arguments, environment: environment)
        }
        // A refresh is handed over to the CLI beside it, which renews.
        let renewed = try run(["exec", "--min-ttl", "30d", "--", "printenv", "TALLYFY_TOKEN"])
        let newToken = !renewed.stdout.isEmpty && renewed.stdout != expected
        #expect(renewed.status == 0 && newToken, "\(renewed.brief)")
        // A bad input still gets the CLI's message and status.
        let bad = try run(["exec", "--min-ttl", "soon", "--", "true"])
        #expect(bad.status == 64 && bad.stderr.contains("\"soon\" is not a duration"), "\(bad.brief)")
    }

    /// Whether the ELF file at `path` has a PT_INTERP program header (a
    /// dynamically linked executable names its loader there).
    static func hasProgramInterpreter(_ path: String) throws -> Bool {
        let file = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? file.close() }
        let header = try #require(try file.read(upToCount: 64))
        #expect(header.count == 64 && header.prefix(4) == Data([0x7F, 0x45, 0x4C, 0x46]) && header[4] == 2, "a 64-bit ELF file")
        func integer(_ data: Data, _ offset: Int, _ size: Int) -> UInt64 {
            (0..<size).reduce(0) { $0 | UInt64(data[data.startIndex + offset + $1]) << (8 * UInt64($1)) }
        }
        let tableOffset = integer(header, 0x20, 8), entrySize = Int(integer(header, 0x36, 2)), count = Int(integer(header, 0x38, 2))
        try file.seek(toOffset: tableOffset)
        let table = try #require(try file.read(upToCount: entrySize * count))
        return (0..<count).contains { integer(table, $0 * entrySize, 4) == 3 }  // PT_INTERP
    }
}

import Foundation
import Testing

/// The library example in README.md is the file that is built here, and it works.
@Suite struct LibraryExampleTests {
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func readmeQuotesTheExampleVerbatim() throws {
        let readme = try String(contentsOf: Self.packageRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let example = try String(
            contentsOf: Self.packageRoot.appendingPathComponent("Sources/tallyfy-vault-example/main.swift"), encoding: .utf8)
        #expect(readme.contains("```swift\n" + example + "```"))
    }

    @Test func theExampleGetsATokenThroughTheLibrary() async throws {
        let secret = "cs-\(UUID().uuidString)"
        let emulator = try await Emulator.start(clients: [("client-test", secret)])
        defer { _ = emulator.stop() }
        let sandbox = try Sandbox()
        try sandbox.initWithKeyFile()
        try sandbox.storeCredentials(for: emulator, secret: secret)
        // No login: the example's first call renews the token and seals it.
        let result = try runProcess(
            BuildProducts.directory.appendingPathComponent("tallyfy-vault-example"), [], environment: sandbox.environment)
        #expect(result.status == 0, "\(result.brief)")
        #expect(result.stdout.hasPrefix("organization org-test, token valid until "))
        #expect(try await emulator.counts()["token"] == 1)
        try sandbox.ok(["token", "--no-refresh"])
    }

    /// What a program outside this package sees: the example type-checks
    /// against the built modules without this package's name, where only
    /// `public` declarations are visible (a `package` one is refused, which
    /// is checked too, so the check can fail); and that public surface stays
    /// small, at most 150 symbols across the two library modules, counted
    /// in their symbol graphs.
    @Test func theExampleNeedsOnlyThePublicAPIAndThatAPIIsSmall() throws {
        let flags = try Self.outsideFlags()
        let example = Self.packageRoot.appendingPathComponent("Sources/tallyfy-vault-example/main.swift").path
        let swiftc = URL(fileURLWithPath: "/usr/bin/env")
        let typecheck = try runProcess(swiftc, ["swiftc", "-typecheck"] + flags + [example], environment: ProcessInfo.processInfo.environment)
        #expect(typecheck.status == 0, "the example needs more than the public API: \(typecheck.stderr)")
        let inside = FileManager.default.temporaryDirectory.appendingPathComponent("package-only-\(UUID().uuidString).swift")
        try "import TallyfyVault\nlet unlocker = VaultUnlocker.self\n".write(to: inside, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: inside) }
        let refused = try runProcess(swiftc, ["swiftc", "-typecheck"] + flags + [inside.path], environment: ProcessInfo.processInfo.environment)
        #expect(refused.status != 0 && refused.stderr.contains("cannot find 'VaultUnlocker' in scope"), "\(refused.brief)")

        let graphs = FileManager.default.temporaryDirectory.appendingPathComponent("symbols-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: graphs, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: graphs) }
        var symbols: [String] = []
        for module in ["TallyfyVaultCore", "TallyfyVault"] {
            let extract = try runProcess(swiftc, ["swift-symbolgraph-extract", "-module-name", module, "-minimum-access-level", "public",
                "-target", BuildProducts.directory.resolvingSymlinksInPath().deletingLastPathComponent().lastPathComponent,
                "-output-dir", graphs.path] + flags, environment: ProcessInfo.processInfo.environment)
            #expect(extract.status == 0, "\(extract.brief)")
        }
        for file in try FileManager.default.contentsOfDirectory(atPath: graphs.path) where file.hasSuffix(".symbols.json") {
            let graph = try JSONSerialization.jsonObject(with: Data(contentsOf: graphs.appendingPathComponent(file))) as? [String: Any]
            for symbol in graph?["symbols"] as? [[String: Any]] ?? [] {
                symbols.append((symbol["pathComponents"] as? [String] ?? []).joined(separator: "."))
            }
        }
        #expect(symbols.contains("TokenBroker.grant(_:)") && symbols.contains("TokenStream"), "\(symbols.sorted())")
        print("public symbols across the two library modules: \(symbols.count)")  // README, "Using the library from Swift"
        #expect(symbols.count <= 150, "\(symbols.count) public symbols: \(symbols.sorted())")
    }

    /// Compiler flags that find the built modules (and the C modules they
    /// import) as a program in another package would: no `-package-name`.
    static func outsideFlags() throws -> [String] {
        let build = BuildProducts.directory.resolvingSymlinksInPath()
        let checkouts = build.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("checkouts")
        var flags = ["-I", build.appendingPathComponent("Modules").path,
            "-Xcc", "-fmodule-map-file=" + packageRoot.appendingPathComponent("Sources/CSodium/module.modulemap").path]
        // C targets' module maps (SwiftPM writes them into each target's
        // build folder); the Swift targets' own ones are for Objective-C.
        for target in try FileManager.default.contentsOfDirectory(atPath: build.path) where target.hasSuffix(".build") && !target.hasSuffix("-tool.build") {
            let map = build.appendingPathComponent(target).appendingPathComponent("module.modulemap")
            if FileManager.default.fileExists(atPath: map.path) { flags += ["-Xcc", "-fmodule-map-file=" + map.path] }
        }
        // Dependencies' C modules ship their own maps under an include folder.
        if let walk = FileManager.default.enumerator(atPath: checkouts.path) {
            for case let path as String in walk where path.hasSuffix("/include/module.modulemap") || (path.contains("/include/") && path.hasSuffix("/module.modulemap")) {
                flags += ["-Xcc", "-fmodule-map-file=" + checkouts.appendingPathComponent(path).path]
                flags += ["-Xcc", "-I" + checkouts.appendingPathComponent(path).deletingLastPathComponent().path]
            }
        }
        return flags
    }
}

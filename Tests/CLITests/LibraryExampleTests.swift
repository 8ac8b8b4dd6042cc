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
}

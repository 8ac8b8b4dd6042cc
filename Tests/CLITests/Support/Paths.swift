import Foundation

/// Where the build products under test live.
///
/// `swift test` builds every product into the same folder as the test runner
/// (`.build/debug`), so the real binaries are found beside it;
/// `TALLYFY_TEST_BIN_DIR` overrides that for a different build folder.
enum BuildProducts {
    static let directory: URL = {
        if let dir = ProcessInfo.processInfo.environment["TALLYFY_TEST_BIN_DIR"] {
            return URL(fileURLWithPath: dir)
        }
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        // The runner may be `…/debug/tallyfy-vaultPackageTests.xctest` or a
        // file inside a bundle; walk up to the folder that holds the products.
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("tallyfy-vault").path) {
                return url
            }
        }
        fatalError("tallyfy-vault binary not found beside the test runner; run `swift build` first")
    }()

    static var vault: URL { directory.appendingPathComponent("tallyfy-vault") }
    static var emulator: URL { directory.appendingPathComponent("tallyfy-emulator") }
}

extension BuildProducts {
    static var cli: URL { directory.appendingPathComponent("tallyfy-vault-cli") }

    /// Copies the launcher, and unless `withCLI` is false the full CLI beside
    /// it, into `folder` (made if needed), mode 0755; returns the launcher.
    /// For tests that run the tool as another user, who may not reach the
    /// build folder (a clone under a private home), or that need the launcher
    /// on its own.
    @discardableResult
    static func copy(into folder: URL, withCLI: Bool = true) throws -> URL {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        for product in withCLI ? [vault, cli] : [vault] {
            let target = folder.appendingPathComponent(product.lastPathComponent)
            try? FileManager.default.removeItem(at: target)
            try FileManager.default.copyItem(at: product, to: target)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: target.path)
        }
        return folder.appendingPathComponent("tallyfy-vault")
    }
}

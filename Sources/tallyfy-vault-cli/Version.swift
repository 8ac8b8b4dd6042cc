import ArgumentParser
import Foundation
import TallyfyVault

/// `tallyfy-vault version` (and `--version`): this release, the formats it
/// reads and writes, and which launcher and CLI are running.
struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the version, the vault format versions read and written, and the launcher's and CLI's versions.")

    func run() throws {
        print(Self.text)
    }

    static var text: String {
        TallyfyVaultVersion.report(cliPath: CommandLine.executablePath, environment: ProcessInfo.processInfo.environment)
    }
}

extension CommandLine {
    /// This CLI's own path, for `version` (so a user can see which install answered).
    static var executablePath: String {
        ThisProgram.path ?? "unknown"
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// This release's version, the vault formats it reads and writes, and the
/// check that a launcher and a CLI from different releases never run together.
///
/// `tallyfy-vault` (the launcher) and `tallyfy-vault-cli` are two binaries
/// installed together (README, "Install"). A half-updated install, one new
/// and one old, would mix a fast path and a renewing path that may disagree
/// on the file format or the contract, so the launcher passes its version to
/// the CLI it starts, and the CLI refuses to run under another one.
package enum TallyfyVaultVersion {
    package static let current = "0.2.0"
    /// Vault file format versions this release opens.
    package static let formatsRead: [UInt16] = VaultFormat.versionsRead
    /// The format version this release writes (2 only for a vault with a
    /// PKCS#11 key slot, which older releases can't open).
    package static let formatWritten: UInt16 = VaultFormat.version

    /// Set by the launcher for the CLI it hands over to; removed from every
    /// child's environment.
    package static let launcherVariable = "TALLYFY_VAULT_LAUNCHER_VERSION"

    /// Refuses (78) when a launcher of another release started this CLI.
    package static func requireMatchingLauncher(environment: [String: String]) throws {
        guard let launcher = environment[launcherVariable], launcher != current else { return }
        throw VaultError(.configuration,
            "the tallyfy-vault launcher is version \(launcher) but its tallyfy-vault-cli is version \(current); they must come from one release",
            hint: "install both again with `tools/install` (or put the matching tallyfy-vault-cli beside the launcher)")
    }

    /// What `tallyfy-vault --version` and `tallyfy-vault version` print.
    package static func report(cliPath: String, environment: [String: String]) -> String {
        let launcher = environment[launcherVariable] ?? "not used (the CLI was started directly)"
        return """
            tallyfy-vault \(current)
            vault format: reads \(formatsRead.map(String.init).joined(separator: ", ")), writes \(formatWritten) (2 with a PKCS#11 key slot)
            launcher: \(launcher)
            cli: \(current) (\(cliPath))
            """
    }
}

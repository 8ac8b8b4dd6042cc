#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The parser and the key-file unlock path over untrusted bytes, for the
/// libFuzzer harness (`Sources/tallyfy-vault-fuzz`, `tools/fuzz`) and its
/// replay mode. It never reads a file, never runs Argon2id (only a key-file
/// secret is given, and a passphrase slot is tried only with a passphrase)
/// and never throws: an error is the expected answer to a hostile file; only
/// a crash, a trap or a sanitizer report is a finding.
package enum FuzzEntry {
    /// How far the bytes got, and why they stopped.
    package struct Outcome: Sendable, Equatable {
        /// `success`, or the failed `VaultError.Kind` as the test vectors name
        /// it (`corrupt`, `refused`, …).
        public var expect: String
        /// `parse`, `open` or `records`: the stage that failed (the last one
        /// reached on success), as in the vectors' `stage`.
        public var stage: String
        /// The error message, empty on success.
        public var message: String
    }

    /// Called with the stage about to run (`parse`, `open`, `records`), so a
    /// replay can show where a crash happened. Not used while fuzzing.
    nonisolated(unsafe) public static var stageHook: ((String) -> Void)? = nil

    /// `ParsedVault(parsing:)`, then `UnlockedVault.open` with the 32-byte
    /// key file `keyFile`, then `userTokens(profile:)` for every profile of
    /// the content and of the clear summary.
    @discardableResult
    package static func parseAndOpen(_ data: Data, keyFile: [UInt8]) -> Outcome {
        var stage = "parse"
        do {
            stageHook?(stage)
            let parsed = try ParsedVault(parsing: data)
            stage = "open"
            stageHook?(stage)
            let secret = UnlockSecret(kind: .keyFile, bytes: SecretBytes(copying: keyFile), origin: "fuzz key file")
            let vault = try UnlockedVault.open(parsed, with: [secret])
            stage = "records"
            stageHook?(stage)
            for profile in Set(vault.content.profiles.keys).union(parsed.summary.profiles.keys).sorted() {
                _ = try vault.userTokens(profile: profile)
            }
            return Outcome(expect: "success", stage: stage, message: "")
        } catch let error as VaultError {
            return Outcome(expect: "\(error.kind)", stage: stage, message: error.message)
        } catch {
            return Outcome(expect: "error", stage: stage, message: "\(error)")
        }
    }
}

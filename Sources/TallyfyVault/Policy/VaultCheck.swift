import Foundation

/// The parts of `check` that touch the vault file and the output file.
public enum VaultCheck {
    /// With a key, proves the clear summary matches the sealed content: it is
    /// authenticated as associated data already, and this also catches a
    /// writer that sealed a wrong summary. Without a key, does nothing.
    public static func verifySummary(store: VaultStore, secrets: [UnlockSecret]) throws {
        guard !secrets.isEmpty else { return }
        let parsedSummary = try store.summary()
        let vault = try store.open(with: secrets)
        guard vault.summary() == parsedSummary else {
            throw VaultError(.corrupt, "the vault's clear summary does not match its sealed content")
        }
    }

    /// Writes a report file the way node_exporter's textfile collector needs:
    /// a temporary file in the same folder, renamed into place. Mode 0644: the
    /// report holds no secret and the collector runs as another user.
    public static func writeReport(_ text: String, to path: String) throws {
        try FileSafety.atomicReplace(path, with: Data((text.isEmpty ? "" : text + "\n").utf8), mode: 0o644)
    }
}

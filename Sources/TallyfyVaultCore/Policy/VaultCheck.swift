#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The parts of `check` that touch the vault file and the output file.
package enum VaultCheck {
    /// The whole check: with `refresh`, renew what is inside the warning
    /// window first (through `renew`, which the caller runs however suits it);
    /// verify the summary when a key is at hand; evaluate. It never prompts,
    /// not even at a terminal: a check is a cron job or a monitoring probe,
    /// and one run by hand must answer the same. Every failure becomes an
    /// UNKNOWN report, never an error.
    package static func run(
        store: VaultStore, sources: UnlockSources, profiles: [String]?, thresholds: HealthCheck.Thresholds,
        refresh: Bool, now: Date,
        renew: (TokenBroker, [String]?) async throws -> [HealthCheck.Problem]
    ) async -> HealthCheck.Report {
        do {
            var refreshProblems: [HealthCheck.Problem] = []
            let unlocker: VaultUnlocker
            if refresh {
                try await store.checkAccess()  // a missing vault is reported before anyone is prompted
                ProcessHardening.protect()
                let secrets = try sources.available()
                guard !secrets.isEmpty else {
                    return HealthCheck.unknown(
                        "--refresh needs the vault's key and none was given (check never prompts): \(TerminalPrompt.unlockSourcesHint)", now: now)
                }
                unlocker = VaultUnlocker(secrets: secrets)
                refreshProblems = try await renew(TokenBroker(store: store, unlocker: unlocker, environment: sources.environment), profiles)
            } else {
                unlocker = VaultUnlocker(secrets: try sources.available())
            }
            // One read (after any renewals): evaluated, and verified when a key is at hand.
            let read = try await store.read(withSummary: true, cached: false)
            try await verifySummary(read, store: store, unlocker: unlocker)
            var report = HealthCheck.evaluate(read.summary, profiles: profiles, thresholds: thresholds, now: now)
            report.problems = refreshProblems + report.problems
            report.status = report.problems.map(\.status).max() ?? .ok
            return report
        } catch let error as VaultError {
            return HealthCheck.unknown(error.message, now: now)
        } catch {
            return HealthCheck.unknown("the vault could not be read", now: now)
        }
    }

    /// With a key, proves the clear summary matches the sealed content: it is
    /// authenticated as associated data already, and this also catches a
    /// writer that sealed a wrong summary. Without a key, does nothing.
    package static func verifySummary(_ read: VaultRead, store: VaultStore, unlocker: VaultUnlocker) async throws {
        guard !unlocker.secrets.isEmpty else { return }
        let vault = try await store.opened(read.parsed, with: unlocker) { try await store.parsed(readSummary: false) }
        guard vault.summary() == read.summary else {
            throw VaultError(.corrupt, "the vault's clear summary does not match its sealed content")
        }
    }

    /// Writes a report file the way node_exporter's textfile collector needs:
    /// a temporary file in the same folder, renamed into place. Mode 0644: the
    /// report holds no secret and the collector runs as another user.
    package static func writeReport(_ text: String, to path: String) throws {
        try FileSafety.atomicReplace(path, with: Data((text.isEmpty ? "" : text + "\n").utf8), mode: 0o644)
    }
}

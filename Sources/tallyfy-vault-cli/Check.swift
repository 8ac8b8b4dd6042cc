import ArgumentParser
import Foundation
import TallyfyVault

extension CheckFormat: ExpressibleByArgument {}

/// `check`: the cron / monitoring check, with Nagios exit statuses.
struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Warn before tokens expire and when the secret is old (Nagios statuses 0/1/2/3).",
        discussion: """
            Reads the vault's clear summary, so it needs no key; when a key is given, the summary is also \
            verified against the sealed content. It never prompts, not even at a terminal. Text output is \
            empty when all is OK, so cron mails only problems. --refresh renews what is inside the warning \
            window first: it needs --key-file, --passphrase-file, TALLYFY_VAULT_PASSPHRASE or a systemd \
            credential, and without one answers UNKNOWN. Exit: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
            """)

    @OptionGroup var global: GlobalOptions
    @Option(help: ArgumentHelp("Warn when a token has less than this left (default 48h application, 14d user).", valueName: "DURATION"))
    var warnBefore: String?
    @Option(help: ArgumentHelp("Critical when a token has less than this left (default 12h).", valueName: "DURATION"))
    var criticalBefore: String?
    @Option(help: ArgumentHelp("Warn when the client secret is older than this (default 90d).", valueName: "DURATION"))
    var secretMaxAge: String?
    @Flag(help: "Renew what is inside the warning window first, then report what is left.")
    var refresh = false
    @Option(help: "text, json or prometheus.") var format: CheckFormat = .text
    @Option(help: ArgumentHelp("Write the output to this file atomically (for node_exporter's textfile collector).", valueName: "FILE"))
    var output: String?

    func run() async throws {
        let report = await evaluate()
        let text = try format.render(report)
        if let output {
            // A report that can't be written is UNKNOWN too: never an exit
            // status outside 0–3, and a line for cron to mail.
            do {
                try VaultCheck.writeReport(text, to: output)
            } catch {
                Output.line("UNKNOWN: " + ((error as? VaultError)?.description ?? "could not write \(output)"))
                throw ExitCode(HealthCheck.Status.unknown.rawValue)
            }
        } else if !text.isEmpty {
            Output.line(text)
        }
        throw ExitCode(report.status.rawValue)
    }

    /// Every failure becomes part of the report (UNKNOWN at worst), never an
    /// exit status outside 0–3.
    private func evaluate() async -> HealthCheck.Report {
        let now = VaultClock.now()
        let thresholds: HealthCheck.Thresholds
        do {
            thresholds = HealthCheck.Thresholds(
                warnBefore: try warnBefore.map(DurationText.parse), criticalBefore: try criticalBefore.map(DurationText.parse),
                secretMaxAge: try secretMaxAge.map(DurationText.parse))
        } catch {
            return HealthCheck.unknown((error as? VaultError)?.description ?? "bad arguments", now: now)
        }
        let context = global.context
        return await VaultCheck.run(
            store: context.store, sources: context.sources, profiles: context.explicitProfile.map { [$0] },
            thresholds: thresholds, refresh: refresh, now: now
        ) { broker, profiles in
            await broker.renewExpiring(profiles: profiles, thresholds: thresholds)
        }
    }
}

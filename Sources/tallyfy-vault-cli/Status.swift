import ArgumentParser
import Foundation
import TallyfyVault

extension FormatTextJSON: ExpressibleByArgument {}

/// `status`: profiles, tokens, expiry, secret age, slots. Needs no key.
struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show profiles, tokens and their expiry, secret age and unlock slots; never a secret.",
        discussion: "Reads only the vault's clear summary, so it needs no key.")

    @OptionGroup var global: GlobalOptions
    @Option(help: "text or json.") var format: FormatTextJSON = .text

    func run() async throws {
        let report = try await VaultStatus.read(store: global.store, now: VaultClock.now())
        switch format {
        case .json:
            Output.line(try Output.json(report))
        case .text:
            var rows = [["PROFILE", "TOKEN", "EXPIRES", "LEFT"]]
            for profile in report.profiles {
                rows.append([profile.name, "application", profile.applicationTokenExpiresAt ?? "-", profile.applicationTokenLeft ?? "none sealed"])
                if profile.userTokenCount > 0 {
                    rows.append([profile.name, "users (\(profile.userTokenCount)), earliest",
                        profile.earliestUserTokenExpiresAt ?? "-", profile.earliestUserTokenLeft ?? "-"])
                }
                rows.append([profile.name, "client secret", "set \(profile.secretSetAt)", "\(profile.secretAge) old"])
            }
            Output.line("vault: \(report.vault)")
            if let generation = report.generation {
                let seen = report.rememberedGeneration.map { $0 == 0 ? "this machine has seen none before" : "this machine has seen \($0)" } ?? "this machine keeps no record"
                Output.line("generation: \(generation) (\(seen))")
            }
            if let audit = report.audit { Output.line("audit log: \(audit)") }
            Output.line("unlock slots: " + report.slots.map { "\($0.label) (\($0.kind.name)\($0.token.map { " on token \"\($0)\"" } ?? "")\($0.weak ? ", WEAK Argon2id cost" : ""))" }.joined(separator: ", "))
            for slot in report.slots where slot.weak {
                Output.line("warning: key slot \"\(slot.label)\" has an Argon2id cost below `interactive`; replace it with `keys add --kdf moderate` and `keys remove \(slot.label)`")
            }
            if report.profiles.isEmpty {
                Output.line("no profiles yet: `tallyfy-vault credentials set --org ORG_ID --client-id ID`")
            } else {
                Output.line(Table.render(rows))
            }
        }
    }
}

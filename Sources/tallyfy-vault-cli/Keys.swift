import ArgumentParser
import Foundation
import TallyfyVault

/// `keys list|add|remove`: the vault's unlock slots.
struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List, add or remove the passphrases and key files that open the vault.",
        subcommands: [List.self, Add.self, Remove.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the unlock slots (needs no key).")
        @OptionGroup var global: GlobalOptions

        func run() throws {
            let slots = try global.store.slots()
            let rows = slots.map { slot in
                [slot.label, slot.kind.name, slot.opsLimit.map { "argon2id, \($0) passes, \(ByteCountFormatter.string(fromByteCount: Int64(slot.memLimitBytes ?? 0), countStyle: .memory))" + (slot.weak ? " (WEAK: below interactive)" : "") } ?? ""]
            }
            Output.line(Table.render([["LABEL", "KIND", "KDF"]] + rows))
            for slot in slots where slot.weak {
                Output.note("warning: key slot \"\(slot.label)\" has an Argon2id cost below `interactive`, so its passphrase is cheap to guess; replace it: `keys add --kdf moderate`, then `keys remove \(slot.label)`")
            }
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a key file or passphrase that opens the vault.",
            discussion: "With neither --new-key-file nor --new-passphrase-file, prompts for a new passphrase twice.")
        @OptionGroup var global: GlobalOptions

        @Option(help: ArgumentHelp("A key file (from `keygen`) that will open the vault.", valueName: "PATH"))
        var newKeyFile: String?

        @Option(help: ArgumentHelp("A file whose first line is the new passphrase.", valueName: "PATH"))
        var newPassphraseFile: String?

        @Option(help: "A label for the new slot (default: key-file or passphrase, numbered).")
        var label: String?

        @Option(help: "Argon2id cost of a new passphrase slot.")
        var kdf: KDFLevel = .moderate

        func validate() throws {
            if newKeyFile != nil && newPassphraseFile != nil {
                throw ValidationError("give --new-key-file or --new-passphrase-file, not both")
            }
        }

        func run() async throws {
            if let label { try SlotLabel.check(label) }
            let secrets = try global.secretsToOpen()
            let newSecret: UnlockSecret =
                if let newKeyFile { try UnlockSources.readKeyFile(newKeyFile) }
                else if let newPassphraseFile { try UnlockSources.readPassphraseFile(newPassphraseFile) }
                else { try TerminalPrompt.passphrase(prompt: "New passphrase for the vault: ", confirm: true) }
            let added = try await global.store.update(with: secrets) { vault in
                let slotLabel = label ?? vault.unusedLabel(for: newSecret.kind)
                try vault.addSlot(secret: newSecret, label: slotLabel, kdf: kdf)
                return slotLabel
            }
            Output.note("added key slot \"\(added)\"")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove an unlock slot; the last one can't be removed.")
        @OptionGroup var global: GlobalOptions

        @Argument(help: "The label of the slot, as `keys list` shows it.")
        var label: String

        func run() async throws {
            try await global.store.update(with: try global.secretsToOpen()) { try $0.removeSlot(label: label) }
            Output.note("removed key slot \"\(label)\"; the key or passphrase it held no longer opens this vault (older copies of the file still open with it: run `rekey` if it leaked)")
        }
    }
}

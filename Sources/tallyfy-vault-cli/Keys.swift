import ArgumentParser
import Foundation
import TallyfyVault

/// `keys list|add|remove`: the vault's unlock slots.
struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List, add or remove the passphrases, key files and PKCS#11 token keys that open the vault.",
        subcommands: [List.self, Add.self, Remove.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the unlock slots (needs no key).")
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let slots = try await global.store.slots()
            let rows = slots.map { slot in
                [slot.label, slot.kind.name, Self.detail(slot)]
            }
            Output.line(Table.render([["LABEL", "KIND", "DETAIL"]] + rows))
            for slot in slots where slot.weak {
                Output.note("warning: key slot \"\(slot.label)\" has an Argon2id cost below `interactive`, so its passphrase is cheap to guess; replace it: `keys add --kdf moderate`, then `keys remove \(slot.label)`")
            }
        }

        /// A passphrase slot's Argon2id cost; a token slot's token and key id.
        static func detail(_ slot: SlotInfo) -> String {
            if let ops = slot.opsLimit {
                return "argon2id, \(ops) passes, \(ByteCountFormatter.string(fromByteCount: Int64(slot.memLimitBytes ?? 0), countStyle: .memory))"
                    + (slot.weak ? " (WEAK: below interactive)" : "")
            }
            if let token = slot.token {
                return "token \"\(token)\" (serial \(slot.tokenSerial ?? "-")), key id \(slot.keyID ?? "-")"
            }
            return ""
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a key file, passphrase or PKCS#11 token key that opens the vault.",
            discussion: """
                With none of --new-key-file, --new-passphrase-file and --pkcs11, prompts for a new passphrase twice. \
                Here --pkcs11 URI names the new slot's key: an RSA key pair on a PKCS#11 token, which alone then opens \
                the slot (RSA-OAEP, SHA-256; the private key never leaves the token); its PIN comes from \
                TALLYFY_VAULT_PKCS11_PIN_FILE or a prompt. To unlock with a token while adding, use TALLYFY_VAULT_PKCS11_URI.
                """)
        @OptionGroup var global: GlobalOptions

        @Option(help: ArgumentHelp("A key file (from `keygen`) that will open the vault.", valueName: "PATH"))
        var newKeyFile: String?

        @Option(help: ArgumentHelp("A file whose first line is the new passphrase.", valueName: "PATH"))
        var newPassphraseFile: String?

        @Option(help: "A label for the new slot (default: key-file, passphrase or pkcs11, numbered).")
        var label: String?

        @Option(help: "Argon2id cost of a new passphrase slot.")
        var kdf: KDFLevel = .moderate

        func validate() throws {
            if [newKeyFile, newPassphraseFile, global.pkcs11].compactMap({ $0 }).count > 1 {
                throw ValidationError("give one of --new-key-file, --new-passphrase-file and --pkcs11")
            }
        }

        func run() async throws {
            if let label { try SlotLabel.check(label) }
            // `--pkcs11` names the new slot's key here, not an unlock source.
            var context = global.context
            context.pkcs11 = nil
            let secrets = try await context.secretsToOpen()
            let newSecret: UnlockSecret =
                if let newKeyFile { try UnlockSources.readKeyFile(newKeyFile) }
                else if let newPassphraseFile { try UnlockSources.readPassphraseFile(newPassphraseFile) }
                else if let uri = global.pkcs11 { try context.sources.pkcs11Secret(uri, promptForPIN: true)! }
                else { try TerminalPrompt.passphrase(prompt: "New passphrase for the vault: ", confirm: true) }
            let added = try await context.store.update(with: secrets) { vault in
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

import ArgumentParser
import TallyfyVault

/// `rekey`: a new data key, everything sealed again.
struct Rekey: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a new data key and re-seal everything.",
        discussion: """
            Use it when a key file or passphrase may have leaked together with a copy of the vault: \
            after `keys remove` and `rekey`, old copies of the file stay readable with the old key only. \
            Every slot is wrapped again, so give the key or passphrase of each (--key-file, --passphrase-file, \
            TALLYFY_VAULT_PASSPHRASE together), or drop the others with --drop-other-slots. At a terminal, \
            when no passphrase is given, it asks for the passphrase of each passphrase slot.
            """)

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Remove the slots that none of the given keys opens, instead of refusing.")
    var dropOtherSlots = false

    func run() async throws {
        var secrets = try await global.secretsToOpen()
        if !dropOtherSlots && !secrets.contains(where: { $0.kind == .passphrase }) && TerminalPrompt.isAvailable {
            // A key file opens its slot, but the passphrase slots need their
            // passphrase too: ask for it rather than refuse.
            for slot in try await global.store.slots() where slot.kind == .passphrase {
                secrets.append(try TerminalPrompt.passphrase(prompt: "Passphrase of slot \"\(slot.label)\": ", confirm: false))
            }
        }
        let kept = try await global.store.update(with: secrets) { vault in
            try vault.rekey(secrets: secrets, dropOthers: dropOtherSlots)
            return vault.slotList.map(\.label)
        }
        Output.note("re-sealed the vault under a new data key; slots: \(kept.joined(separator: ", "))")
    }
}

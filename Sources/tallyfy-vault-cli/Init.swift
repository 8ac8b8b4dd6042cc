import ArgumentParser
import TallyfyVault

extension KDFLevel: ExpressibleByArgument {}

/// `init`: create an empty vault for the given key file or passphrase.
struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create an empty vault, unlocked by the given key file or passphrase.",
        discussion: "Refuses to overwrite an existing vault. With no key source, prompts for a new passphrase twice.")

    @OptionGroup var global: GlobalOptions

    @Option(help: "Argon2id cost of a passphrase slot: interactive, moderate or sensitive.")
    var kdf: KDFLevel = .moderate

    @Option(help: "A label for the first unlock slot.")
    var label: String?

    func run() async throws {
        ProcessHardening.protect()
        let store = global.store
        try await store.requireAbsent()  // before prompting for a passphrase that would be wasted
        if let label { try SlotLabel.check(label) }  // the rule `keys add --label` and the reader apply
        let secret = try global.sources.secretToCreate(what: "the new vault")
        let vault = try UnlockedVault.create(
            secret: secret, label: label ?? secret.kind.name, kdf: kdf)
        try await store.create(vault)
        Output.note("created an empty vault at \(store.path), unlocked by \(secret.origin)")
    }
}

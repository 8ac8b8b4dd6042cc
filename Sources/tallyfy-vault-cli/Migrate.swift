import ArgumentParser
import TallyfyVault

/// `migrate --to LOCATION`: copy the sealed vault to a file or an etcd cluster.
struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy the vault, sealed as it is, to another location (a file path or etcd://HOST:PORT/PREFIX).",
        discussion: """
            No key is needed and nothing is ever written in the clear: the sealed bytes are copied and read back. \
            Refuses to overwrite a vault at the destination. The vault at --vault is left as it was: remove it \
            once every machine uses the new location.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: ArgumentHelp("Where the vault goes: a file path, etcd://HOST:PORT[,HOST:PORT…]/PREFIX or etcds://…",
        valueName: "LOCATION"))
    var to: String

    func run() async throws {
        ProcessHardening.protect()
        let context = global.context
        let source = context.store
        let target = VaultStore(path: to, lockTimeout: VaultStore.lockTimeout(environment: context.environment),
            environment: context.environment, remote: context.remote)
        let from = try source.location()
        guard try target.location() != from else {
            throw VaultError(.usage, "--to names the vault's own location \(to)", hint: "name another file or etcd prefix")
        }
        try await target.requireAbsent()
        let bytes = try await source.sealedBytes()
        try await target.create(sealedBytes: bytes)
        guard try await target.sealedBytes() == bytes else {
            throw VaultError(.io, "the copy at \(to) does not read back as written",
                hint: "remove it and run `tallyfy-vault migrate` again; the vault at \(source.path) is unchanged")
        }
        // No key is at hand, so the record has no MAC; the next keyed record covers it (SECURITY.md, "Audit log").
        try source.audit.unkeyedChange(location: source.locationText)
        Output.note("copied the sealed vault from \(source.path) to \(to); the vault at \(source.path) is unchanged")
        Output.note("use it with --vault \(to) (or TALLYFY_VAULT_FILE), then remove the old copy")
    }
}

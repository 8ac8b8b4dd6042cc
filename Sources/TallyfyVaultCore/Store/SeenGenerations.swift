#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// This machine's memory of the newest generation it has seen of each vault,
/// so an older copy put back (a backup, a snapshot, a hostile writer to the
/// file or to etcd) is refused instead of trusted: its old client secret,
/// old tokens and old key slots (one removed because a laptop was lost)
/// would otherwise all come back.
///
/// One small file per vault, `$XDG_STATE_HOME/tallyfy-vault/seen/<vault id>`
/// (folder 0700, file 0600, replaced atomically), holding the generation as
/// decimal digits. Every open of a store's vault is admitted here
/// (`VaultStore.opened`), every write remembered. A machine that never saw
/// the newer generation can't tell (SECURITY.md).
package struct SeenGenerations: Sendable {
    let folder: String
    /// `--accept-rollback` / `TALLYFY_VAULT_ACCEPT_ROLLBACK=1`: accept an
    /// older vault once, with a warning, and remember its generation instead.
    let acceptRollback: Bool

    package static let acceptVariable = "TALLYFY_VAULT_ACCEPT_ROLLBACK"

    /// `nil` when the environment names no home to keep the memory in.
    package init?(environment: [String: String]) {
        if let state = environment["XDG_STATE_HOME"], state.hasPrefix("/") {
            folder = state + "/tallyfy-vault/seen"
        } else if let home = HomeFolder.path(environment: environment) {
            folder = home + "/.local/state/tallyfy-vault/seen"
        } else {
            return nil
        }
        acceptRollback = environment[Self.acceptVariable] == "1"
    }

    /// The generation remembered for the vault named `id`, 0 when none.
    package func remembered(_ id: String) -> UInt64 {
        guard Self.isName(id), let data = try? FileSafety.readPrivate(folder + "/" + id, what: "the remembered generation"),
            data.count <= 21
        else { return 0 }
        return UInt64(String(decoding: data.filter { $0 != 0x0A }, as: UTF8.self)) ?? 0
    }

    /// Refuses (65) a vault older than one this machine has seen, unless
    /// rollbacks are accepted; remembers a newer one. `true` when an older
    /// vault was accepted.
    @discardableResult
    package func admit(_ vault: UnlockedVault, location: String) throws -> Bool {
        guard let id = vault.content.id, Self.isName(id) else { return false }  // written by an earlier release
        let generation = vault.content.generation ?? 0
        let seen = remembered(id)
        if generation < seen {
            guard acceptRollback else {
                throw VaultError(.corrupt,
                    "the vault at \(location) is older than one this machine has already seen (generation \(generation) < \(seen)): it was rolled back or restored from a backup",
                    hint: "put the newer vault back; if you restored this one on purpose, run one command with --accept-rollback (or TALLYFY_VAULT_ACCEPT_ROLLBACK=1)",
                    cause: .rolledBack)
            }
            let warning = "tallyfy-vault: warning: accepted an older vault at \(location) (generation \(generation) < \(seen)) because of --accept-rollback; this machine now remembers generation \(generation)\n"
            _ = warning.withCString { write(2, $0, strlen($0)) }
            store(generation, for: id)
            return true
        } else if generation > seen {
            store(generation, for: id)
        }
        return false
    }

    /// After a write: the generation just written is the newest this machine has seen.
    package func remember(_ vault: UnlockedVault) {
        guard let id = vault.content.id, Self.isName(id), let generation = vault.content.generation,
            generation > remembered(id)
        else { return }
        store(generation, for: id)
    }

    /// Best effort: a memory that can't be written (a read-only home) costs
    /// the protection on this machine, never the command.
    private func store(_ generation: UInt64, for id: String) {
        do {
            try FileSafety.makeDirectory(folder)
            try FileSafety.requireSafeDirectory(folder)
            try FileSafety.atomicReplace(folder + "/" + id, with: Data("\(generation)\n".utf8))
        } catch {}
    }

    /// A vault id is 32 lower-case hex digits: never a path.
    static func isName(_ id: String) -> Bool {
        id.utf8.count == 32 && id.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }
}

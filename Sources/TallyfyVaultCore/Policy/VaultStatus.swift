#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// What `status` shows, read from the clear summary and slot table only.
package struct VaultStatus: Sendable, Encodable {
    package struct ProfileStatus: Sendable, Encodable {
        package var name: String
        package var applicationTokenExpiresAt: String?
        package var applicationTokenLeft: String?
        package var userTokenCount: Int
        package var earliestUserTokenExpiresAt: String?
        package var earliestUserTokenLeft: String?
        package var secretSetAt: String
        package var secretAge: String
    }

    package var vault: String
    /// The vault's write count, from the clear summary (unauthenticated
    /// until opened), and the newest this machine has seen of it: a vault
    /// below that is refused as rolled back. `nil` for a vault written
    /// before generations existed.
    package var generation: UInt64?
    package var rememberedGeneration: UInt64?
    package var slots: [SlotInfo]
    package var profiles: [ProfileStatus]
    /// Where this machine records hand-outs and changes: the log's path, or
    /// `off` (`TALLYFY_VAULT_AUDIT=off`), with ` (required)` in that mode.
    package var audit: String?

    package static func read(store: VaultStore, now: Date) async throws -> VaultStatus {
        let read = try await store.read(withSummary: true, cached: false)
        var status = make(summary: read.summary, slots: read.slots, vault: store.path, now: now)
        status.generation = read.summary.generation
        status.rememberedGeneration = read.summary.vaultID.flatMap { store.rememberedGeneration(of: $0) }
        status.audit = store.audit.describe(vaultID: store.audit.vaultID(forLocation: store.locationText))
        return status
    }

    /// The report for a summary and slot table already read.
    package static func make(summary: VaultSummary, slots: [SlotInfo], vault: String, now: Date) -> VaultStatus {
        let rfc = ChildEnvironment.rfc3339
        let profiles = summary.profiles.sorted { $0.key < $1.key }.map { name, profile in
            ProfileStatus(
                name: name,
                applicationTokenExpiresAt: profile.applicationTokenExpiresAt.map(rfc),
                applicationTokenLeft: profile.applicationTokenExpiresAt.map { Lifetime.describe($0, now: now) },
                userTokenCount: profile.userTokenCount,
                earliestUserTokenExpiresAt: profile.earliestUserTokenExpiresAt.map(rfc),
                earliestUserTokenLeft: profile.earliestUserTokenExpiresAt.map { Lifetime.describe($0, now: now) },
                secretSetAt: rfc(profile.secretSetAt),
                secretAge: DurationText.format(now.timeIntervalSince(profile.secretSetAt)))
        }
        return VaultStatus(vault: vault, generation: nil, rememberedGeneration: nil, slots: slots, profiles: profiles)
    }
}

/// `--format text|json` for commands that have just those two.
package enum FormatTextJSON: String, Sendable, CaseIterable {
    case text, json
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The non-secret summary kept in the clear in the vault header, so that a
/// cron job can warn about expiry without holding any key.
///
/// It reveals profile names, when tokens expire, how many user tokens each
/// profile has and when the secret was set: nothing that would let anyone call
/// Tallyfy. It is part of the header, which is authenticated as associated
/// data of the sealed root, so any change to it is detected as soon as the
/// vault is opened with a key.
package struct VaultSummary: Codable, Sendable, Equatable {
    package var profiles: [String: ProfileSummary]
    /// The vault's id and generation, copied from the sealed root on every
    /// write so `status` and `doctor` can show them without a key (absent
    /// from vaults written before generations existed).
    package var vaultID: String?
    package var generation: UInt64?

    package init(profiles: [String: ProfileSummary] = [:], vaultID: String? = nil, generation: UInt64? = nil) {
        self.profiles = profiles
        self.vaultID = vaultID
        self.generation = generation
    }
}

/// What `check` needs to know about one profile, without its secrets.
package struct ProfileSummary: Codable, Sendable, Equatable {
    package var secretSetAt: Date
    package var applicationTokenExpiresAt: Date?
    package var userTokenCount: Int
    package var earliestUserTokenExpiresAt: Date?
    /// The last failed renewal, until one succeeds (absent from the JSON when none).
    package var lastRenewalFailure: RenewalFailure?

    package init(
        secretSetAt: Date, applicationTokenExpiresAt: Date?, userTokenCount: Int, earliestUserTokenExpiresAt: Date?,
        lastRenewalFailure: RenewalFailure? = nil
    ) {
        self.secretSetAt = secretSetAt
        self.applicationTokenExpiresAt = applicationTokenExpiresAt
        self.userTokenCount = userTokenCount
        self.earliestUserTokenExpiresAt = earliestUserTokenExpiresAt
        self.lastRenewalFailure = lastRenewalFailure
    }
}

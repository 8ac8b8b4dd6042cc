#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The bounds on every value the vault takes in, stores and reads back.
///
/// The writer enforces each bound before anything is written, and the
/// reader accepts at least as much, so a write can never produce a file that
/// a later read refuses. The reader's own limits (SECURITY.md, "File
/// format") are the outer fence: a hostile or damaged file that exceeds them
/// is refused as corrupt (65), never trusted, never a crash.
package enum VaultBounds {
    /// Dates as Unix seconds: from 1970 to the last second of year 9999.
    /// Beyond these, conversions to whole seconds or to a calendar date
    /// would overflow; a vault holding one is refused as corrupt.
    package static let earliestDate: TimeInterval = 0
    package static let latestDate: TimeInterval = 253_402_300_799

    /// The longest and shortest token lifetime accepted from Tallyfy (its own
    /// are 7 and 90 days): an answer outside this is refused, not sealed.
    package static let minimumTokenLifetime: TimeInterval = 1
    package static let maximumTokenLifetime: TimeInterval = 3650 * 86_400

    /// A client secret, in UTF-8 bytes (Tallyfy's are 40 to 100 characters).
    package static let maxSecretLength = 4096
    /// A token from Tallyfy (real ones are a few KiB).
    package static let maxTokenLength = 16 * 1024
    /// A token or API URL.
    package static let maxURLLength = 2048
    /// An email address (RFC 5321's limit on a forward path).
    package static let maxEmailLength = 254
    /// Profiles in one vault: keeps the root far below its 64 MiB limit
    /// (each profile is at most about 25 KiB of JSON).
    package static let maxProfiles = 1000

    /// Whether `date` is a date the vault can hold.
    package static func isValid(_ date: Date) -> Bool {
        let seconds = date.timeIntervalSince1970
        return seconds.isFinite && seconds >= earliestDate && seconds <= latestDate
    }

    /// Whether `seconds` (an index entry's expiry) is a date the vault can hold.
    static func isValid(seconds: Int64) -> Bool {
        seconds >= Int64(earliestDate) && seconds <= Int64(latestDate)
    }

    /// `seconds` pulled into the range above, for code that must print or
    /// convert a date whatever it is (a hostile summary, a test clock).
    package static func clamped(_ seconds: TimeInterval) -> TimeInterval {
        guard seconds.isFinite else { return seconds > 0 ? latestDate : earliestDate }
        return min(max(seconds, -62_135_596_800), latestDate)  // year 1 .. 9999
    }
}

extension SealedToken {
    /// Dates a reader can convert without trapping.
    var hasReadableDates: Bool { VaultBounds.isValid(expiresAt) && VaultBounds.isValid(obtainedAt) }

    /// A token the vault may seal and read back: dates in range, a value of
    /// plausible length.
    var isWithinBounds: Bool {
        VaultBounds.isValid(expiresAt) && VaultBounds.isValid(obtainedAt) && !value.isEmpty
            && value.utf8.count <= VaultBounds.maxTokenLength
    }
}

extension Profile {
    var hasReadableDates: Bool {
        VaultBounds.isValid(secretSetAt) && (applicationToken?.hasReadableDates ?? true)
            && (lastRenewalFailure.map { VaultBounds.isValid($0.at) } ?? true)
    }

    var isWithinBounds: Bool {
        VaultBounds.isValid(secretSetAt) && (applicationToken?.isWithinBounds ?? true)
            && (lastRenewalFailure.map { VaultBounds.isValid($0.at) && $0.reason.utf8.count <= RenewalFailure.maxReasonLength } ?? true)
            && !clientSecret.isEmpty && clientSecret.utf8.count <= VaultBounds.maxSecretLength
            && !orgID.isEmpty && orgID.utf8.count <= 200 && !clientID.isEmpty && clientID.utf8.count <= 200
            && tokenURL.utf8.count <= VaultBounds.maxURLLength && apiURL.utf8.count <= VaultBounds.maxURLLength
    }
}

extension VaultContent {
    /// What a reader requires of a decrypted root: every date convertible.
    /// (Lengths are not checked on reading, so that a vault an older release
    /// wrote with a longer value still opens; the writer's bounds below keep
    /// new values in range.)
    var hasReadableDates: Bool { profiles.values.allSatisfy(\.hasReadableDates) }

    var isWithinBounds: Bool {
        profiles.count <= VaultBounds.maxProfiles
            && profiles.allSatisfy { (try? Credentials.checkProfileName($0.key)) != nil && $0.value.isWithinBounds }
    }
}

extension UserTokenRecord {
    var isWithinBounds: Bool {
        token.isWithinBounds && !email.isEmpty && email.utf8.count <= VaultBounds.maxEmailLength
            && (try? Credentials.checkProfileName(profile)) != nil
    }
}

extension ProfileSummary {
    /// What the reader requires of the clear summary (the writer produces
    /// nothing else: its dates come from a content within bounds).
    var isReadable: Bool {
        VaultBounds.isValid(secretSetAt) && (applicationTokenExpiresAt.map(VaultBounds.isValid) ?? true)
            && (earliestUserTokenExpiresAt.map(VaultBounds.isValid) ?? true)
            && userTokenCount >= 0 && userTokenCount <= VaultFormat.maxRecords
            && (lastRenewalFailure.map { VaultBounds.isValid($0.at) && $0.reason.utf8.count <= RenewalFailure.maxReasonLength } ?? true)
            && (lastRenewalFailure?.hasNoControlCharacters ?? true)
    }
}

extension RenewalFailure {
    /// `check` prints the reason from the clear summary before any key has
    /// authenticated it: a reader refuses control characters in it (the
    /// writer strips them, see `init(at:reason:)`).
    var hasNoControlCharacters: Bool {
        reason.unicodeScalars.allSatisfy { $0.properties.generalCategory != .control }
    }
}

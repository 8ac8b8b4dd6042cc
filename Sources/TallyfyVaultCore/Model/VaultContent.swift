#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// What the vault holds, decrypted: one entry per profile.
///
/// This is the sealed "root" of the file. User tokens are not in here: each
/// is a record sealed on its own (see `UserTokenRecord`), so that finding one
/// user's token in a vault of ten thousand does not decrypt and parse them all.
package struct VaultContent: Codable, Sendable, Equatable {
    package var profiles: [String: Profile]
    /// A random name for this vault (32 hex digits), kept for its whole life,
    /// across `rekey` and `migrate`: what this machine's memory of the
    /// newest generation it has seen (`SeenGenerations`) is keyed by.
    /// Absent in a vault an earlier release wrote; given at its next write.
    package var id: String?
    /// Increased by every write (`UnlockedVault.sealed`). Sealed, so it can't
    /// be changed without the key: an older vault put back is told apart by
    /// it. Absent (0) in a vault an earlier release wrote.
    package var generation: UInt64?
    /// The root of the audit key (hex), pinned at the first write of this
    /// release from the data key, so `rekey` keeps old records verifiable
    /// (`UnlockedVault.auditKey`). Absent until then.
    package var auditKey: String?
    /// The head of each machine's audit log at the vault's last writes,
    /// keyed by host and log path (`AuditTrail.headName`): each machine
    /// keeps its own log, and a write seals only its own head.
    package var auditHeads: [String: AuditHead]?

    package init(profiles: [String: Profile] = [:]) {
        self.profiles = profiles
    }
}

/// One credential set: a Tallyfy organization and the client issued for it.
package struct Profile: Codable, Sendable, Equatable {
    package var orgID: String
    package var clientID: String
    /// The client secret. It lives in a `String` only while the vault is open.
    package var clientSecret: String
    package var tokenURL: String
    package var apiURL: String
    /// When the secret was set or last rotated; `check` warns when it is old.
    package var secretSetAt: Date
    /// The current application token, if one was obtained.
    package var applicationToken: SealedToken?
    /// The last renewal that failed while a sealed token was handed out
    /// instead; cleared by the next renewal that succeeds. `check` reports it.
    package var lastRenewalFailure: RenewalFailure?

    package init(
        orgID: String, clientID: String, clientSecret: String, tokenURL: String, apiURL: String,
        secretSetAt: Date, applicationToken: SealedToken? = nil
    ) {
        self.orgID = orgID
        self.clientID = clientID
        self.clientSecret = clientSecret
        self.tokenURL = tokenURL
        self.apiURL = apiURL
        self.secretSetAt = secretSetAt
        self.applicationToken = applicationToken
    }
}

/// When a renewal failed and why, in words that never hold a secret (they
/// are the library's own error messages, which never do), bounded in length.
package struct RenewalFailure: Codable, Sendable, Equatable {
    package var at: Date
    package var reason: String

    package static let maxReasonLength = 200

    package init(at: Date, reason: String) {
        self.at = at
        let oneLine = String(String.UnicodeScalarView(reason.unicodeScalars.filter { $0.properties.generalCategory != .control }))
        self.reason = String(oneLine.utf8.prefix(Self.maxReasonLength)) ?? String(oneLine.prefix(Self.maxReasonLength / 4))
    }
}

/// A bearer token and when it stops being valid.
package struct SealedToken: Codable, Sendable, Equatable {
    package var value: String
    package var expiresAt: Date
    package var obtainedAt: Date

    package init(value: String, expiresAt: Date, obtainedAt: Date) {
        self.value = value
        self.expiresAt = expiresAt
        self.obtainedAt = obtainedAt
    }

    /// Tells tokens apart without their value, so "the token I saw before
    /// waiting for the lock" can be passed on (from the launcher to the CLI)
    /// without passing the token.
    package struct Identity: Sendable, Equatable {
        package var expiresAt: Date
        package var obtainedAt: Date

        package init(expiresAt: Date, obtainedAt: Date) {
            self.expiresAt = expiresAt
            self.obtainedAt = obtainedAt
        }
    }

    package var identity: Identity { Identity(expiresAt: expiresAt, obtainedAt: obtainedAt) }
}

/// A user-scoped token, sealed as its own record.
package struct UserTokenRecord: Codable, Sendable, Equatable {
    package var profile: String
    /// The email as Tallyfy knows it; lookups ignore case.
    package var email: String
    package var token: SealedToken

    package init(profile: String, email: String, token: SealedToken) {
        self.profile = profile
        self.email = email
        self.token = token
    }
}

/// The JSON coding used for every sealed body, fixed so that other
/// implementations can read it (SECURITY.md): sorted keys, dates as Unix
/// seconds.
enum SealedJSON {
    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .secondsSince1970
        return encoder
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        return decoder
    }
}

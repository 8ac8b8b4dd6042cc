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
public struct VaultContent: Codable, Sendable, Equatable {
    public var profiles: [String: Profile]
    /// A random name for this vault (32 hex digits), kept for its whole life,
    /// across `rekey` and `migrate`: what this machine's memory of the
    /// newest generation it has seen (`SeenGenerations`) is keyed by.
    /// Absent in a vault an earlier release wrote; given at its next write.
    public var id: String?
    /// Increased by every write (`UnlockedVault.sealed`). Sealed, so it can't
    /// be changed without the key: an older vault put back is told apart by
    /// it. Absent (0) in a vault an earlier release wrote.
    public var generation: UInt64?
    /// The root of the audit key (hex), pinned at the first write of this
    /// release from the data key, so `rekey` keeps old records verifiable
    /// (`UnlockedVault.auditKey`). Absent until then.
    public var auditKey: String?
    /// The head of each machine's audit log at the vault's last writes,
    /// keyed by host and log path (`AuditTrail.headName`): each machine
    /// keeps its own log, and a write seals only its own head.
    public var auditHeads: [String: AuditHead]?

    public init(profiles: [String: Profile] = [:]) {
        self.profiles = profiles
    }
}

/// One credential set: a Tallyfy organization and the client issued for it.
public struct Profile: Codable, Sendable, Equatable {
    public var orgID: String
    public var clientID: String
    /// The client secret. It lives in a `String` only while the vault is open.
    public var clientSecret: String
    public var tokenURL: String
    public var apiURL: String
    /// When the secret was set or last rotated; `check` warns when it is old.
    public var secretSetAt: Date
    /// The current application token, if one was obtained.
    public var applicationToken: SealedToken?
    /// The last renewal that failed while a sealed token was handed out
    /// instead; cleared by the next renewal that succeeds. `check` reports it.
    public var lastRenewalFailure: RenewalFailure?

    public init(
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
public struct RenewalFailure: Codable, Sendable, Equatable {
    public var at: Date
    public var reason: String

    public static let maxReasonLength = 200

    public init(at: Date, reason: String) {
        self.at = at
        let oneLine = String(String.UnicodeScalarView(reason.unicodeScalars.filter { $0.properties.generalCategory != .control }))
        self.reason = String(oneLine.utf8.prefix(Self.maxReasonLength)) ?? String(oneLine.prefix(Self.maxReasonLength / 4))
    }
}

/// A bearer token and when it stops being valid.
public struct SealedToken: Codable, Sendable, Equatable {
    public var value: String
    public var expiresAt: Date
    public var obtainedAt: Date

    public init(value: String, expiresAt: Date, obtainedAt: Date) {
        self.value = value
        self.expiresAt = expiresAt
        self.obtainedAt = obtainedAt
    }

    /// Tells tokens apart without their value, so "the token I saw before
    /// waiting for the lock" can be passed on (from the launcher to the CLI)
    /// without passing the token.
    public struct Identity: Sendable, Equatable {
        public var expiresAt: Date
        public var obtainedAt: Date

        public init(expiresAt: Date, obtainedAt: Date) {
            self.expiresAt = expiresAt
            self.obtainedAt = obtainedAt
        }
    }

    public var identity: Identity { Identity(expiresAt: expiresAt, obtainedAt: obtainedAt) }
}

/// A user-scoped token, sealed as its own record.
public struct UserTokenRecord: Codable, Sendable, Equatable {
    public var profile: String
    /// The email as Tallyfy knows it; lookups ignore case.
    public var email: String
    public var token: SealedToken

    public init(profile: String, email: String, token: SealedToken) {
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

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// What a caller wants: whose token, with how much life left, and whether
/// Tallyfy may be contacted to get it.
public struct TokenRequest: Sendable {
    public var profile: String
    /// A user's email for a user-scoped token; `nil` for the application token.
    public var user: String?
    public var minimumLifetime: TimeInterval
    public var renewal: Renewal

    /// When Tallyfy is asked for a new token.
    public enum Renewal: Sendable, Equatable {
        /// When less than `minimumLifetime` is left. If renewing fails for a
        /// passing reason, a still-valid sealed token is handed out with a
        /// warning (`TokenPolicy.canFallBack`). The default.
        case whenStale
        /// As `whenStale`, but a failed renewal fails (`--strict-ttl`).
        case whenStaleStrictly
        /// Never: the sealed token while it has not expired, else 78 (`--no-refresh`).
        case never
        /// Always, even when the sealed token is fresh (`login`, `users token`).
        case always
    }

    public init(profile: String, user: String? = nil, minimumLifetime: TimeInterval = TokenPolicy.defaultMinimumLifetime,
        renewal: Renewal = .whenStale)
    {
        self.profile = profile
        self.user = user
        self.minimumLifetime = minimumLifetime
        self.renewal = renewal
    }
}

/// Hands out valid tokens: from the vault when they are fresh enough, else
/// renewed from Tallyfy under the vault lock and sealed at once.
///
/// This is the library entry point for Swift programs as much as for the CLI.
/// The fast path (`sealedGrant`) lives here, in the core module, which has no
/// HTTP stack; renewing (`grant`, `renewedGrant`) is added by `TallyfyVault`:
///
/// ```swift
/// let broker = TokenBroker(store: VaultStore(path: path), secrets: try sources.secretsToOpen())
/// let grant = try await broker.grant(TokenRequest(profile: "default", minimumLifetime: 3600))
/// ```
public struct TokenBroker: Sendable {
    package let store: VaultStore
    /// Shared by every open this broker makes, so a refresh (look, then
    /// re-read under the lock) derives the key once.
    package let unlocker: VaultUnlocker
    package let environment: [String: String]
    /// Whom a hand-out is recorded for (`AuditTrail`).
    package var recording: HandOutRecord = .thisProcess

    package enum HandOutRecord: Sendable {
        /// This process asked (the CLI, the launcher, a library caller).
        case thisProcess
        /// An agent's client, as the kernel named it (`SO_PEERCRED`).
        case peer(AuditRequester)
        /// Nobody was handed anything (the agent's own background renewals,
        /// whose write is recorded as a change).
        case none
    }

    /// This broker, recording its hand-outs for `whom`.
    package func recording(_ whom: HandOutRecord) -> TokenBroker {
        var broker = self
        broker.recording = whom
        return broker
    }

    package init(store: VaultStore, unlocker: VaultUnlocker, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.store = store
        self.unlocker = unlocker
        self.environment = environment
    }

    public init(store: VaultStore, secrets: [UnlockSecret], environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.init(store: store, unlocker: VaultUnlocker(secrets: secrets), environment: environment)
    }

    package var now: Date { VaultClock.now(environment: environment) }

    /// The fast path, with no lock, no HTTP client and no event loop: the
    /// sealed token if it satisfies `request`, `nil` when it must be renewed.
    /// With `allowRefresh` false, a valid (not expired) token is returned and
    /// an expired or missing one is an error (78). One read of the vault (for
    /// an etcd vault, of this machine's cache: a renewal re-reads from the
    /// cluster under the fleet-wide lock and takes another machine's token).
    public func sealedGrant(_ request: TokenRequest) async throws -> TokenGrant? {
        guard request.renewal != .always else { return nil }
        return try sealedGrant(request, in: await open(store.read()))
    }

    /// Unlocks what `VaultStore.read` read: the one decryption of a command's
    /// pass (a vault that looks rolled back is read once more, as the store reads).
    package func open(_ read: VaultRead) async throws -> UnlockedVault {
        try await store.opened(read.parsed, with: unlocker) { try await store.parsed(readSummary: false) }
    }

    /// `open` for the launcher, which is not async and reads only what is on
    /// this machine (`VaultStore.readLocally`).
    package func openLocally(_ read: VaultRead) throws -> UnlockedVault {
        try store.openedLocally(read.parsed, with: unlocker)
    }

    /// `sealedGrant(_:)` on a vault already open: the agent keeps the vault
    /// open while its file stays the same, and decides here without reading
    /// or decrypting it again.
    package func sealedGrant(_ request: TokenRequest, in vault: UnlockedVault) throws -> TokenGrant? {
        try decideSealed(request, in: vault).map(handedOut)
    }

    /// The one place a token leaves the broker: recorded first (in
    /// `required` mode a record that can't be written stops it here, 74).
    package func handedOut(_ grant: TokenGrant) throws -> TokenGrant {
        switch recording {
        case .thisProcess: try store.audit.handOut(grant)
        case .peer(let requester): try store.audit.handOut(grant, requester: requester)
        case .none: break
        }
        return grant
    }

    /// `sealedGrant(_:in:)` without the hand-out: what the sealed token allows.
    package func decideSealed(_ request: TokenRequest, in vault: UnlockedVault) throws -> TokenGrant? {
        guard request.renewal != .always else { return nil }
        let profile = try Self.profile(request.profile, in: vault)
        let token = try sealedToken(request, in: vault)
        if TokenPolicy.isFresh(token, minimumLifetime: request.minimumLifetime, now: now) {
            return Self.grant(token!, profile: profile, request: request)
        }
        guard request.renewal != .never else {
            guard let token, TokenPolicy.isValid(token, now: now) else {
                throw VaultError(.configuration,
                    "no valid \(describe(request)) is sealed, and --no-refresh forbids asking Tallyfy for one",
                    hint: "run without --no-refresh, or `tallyfy-vault \(request.user == nil ? "login" : "users token \(request.user!)")`")
            }
            return Self.grant(token, profile: profile, request: request)
        }
        return nil
    }

    /// What the clear summary says, before any key is derived: `false` when
    /// the sealed token may not satisfy `request`, so a caller about to spend
    /// an Argon2id derivation only to find it must renew can hand over to
    /// the renewing code at once and derive the key there, once. The summary
    /// is not authenticated until the vault is opened, so this only ever
    /// decides where the work happens, never what token is handed out.
    package func summaryPromisesSealedToken(_ request: TokenRequest, in read: VaultRead) -> Bool {
        guard request.renewal != .always, let profile = read.summary.profiles[request.profile] else { return false }
        let expiry = request.user == nil ? profile.applicationTokenExpiresAt : profile.earliestUserTokenExpiresAt
        guard let expiry else { return false }
        let left = expiry.timeIntervalSince(now)
        return request.renewal == .never ? left > 0 : left >= request.minimumLifetime
    }

    /// An application token used only to issue a user token must outlive the call.
    package static let applicationTokenMarginForUserCalls: TimeInterval = 300

    /// How much life the application token needs left to issue a user token
    /// with: five minutes, but never more than a quarter of its lifetime. With
    /// tokens that live less than five minutes, a flat five would renew the
    /// application token at every `users token`, for the whole fleet: found by
    /// tools/partition-test (12-second tokens), where each `users token` made
    /// an application-token request of its own (and, against a Tallyfy that
    /// revokes on reissue, revoked the token every machine was handing out).
    package static func applicationTokenMargin(forUserCallsWith token: SealedToken) -> TimeInterval {
        min(applicationTokenMarginForUserCalls, max(0, token.expiresAt.timeIntervalSince(token.obtainedAt)) / 4)
    }

    package func sealedToken(_ request: TokenRequest, in vault: UnlockedVault) throws -> SealedToken? {
        let profile = try Self.profile(request.profile, in: vault)
        guard let email = request.user else { return profile.applicationToken }
        return try vault.userToken(profile: request.profile, email: email)?.token
    }

    package func describe(_ request: TokenRequest) -> String {
        request.user.map { "user token for \($0)" } ?? "application token for profile \"\(request.profile)\""
    }

    /// The profile's credentials, or the configuration error (78) that says how to add them.
    package static func profile(_ name: String, in vault: UnlockedVault) throws -> Profile {
        guard let profile = vault.content.profiles[name] else {
            throw VaultError(.configuration, "profile \"\(name)\" has no credentials in this vault",
                hint: "store them with `tallyfy-vault --profile \(name) credentials set --org ORG_ID --client-id ID`")
        }
        return profile
    }

    package static func grant(_ token: SealedToken, profile: Profile, request: TokenRequest) -> TokenGrant {
        TokenGrant(profile: request.profile, orgID: profile.orgID, apiURL: profile.apiURL, token: token.value,
            expiresAt: token.expiresAt, user: request.user)
    }
}

import Foundation

/// What a caller wants: whose token, with how much life left, and whether
/// Tallyfy may be contacted to get it.
public struct TokenRequest: Sendable {
    public var profile: String
    /// A user's email for a user-scoped token; `nil` for the application token.
    public var user: String?
    public var minimumLifetime: TimeInterval
    public var allowRefresh: Bool
    /// Obtain a new token even when the sealed one is fresh (`login`, `users token`).
    public var force: Bool

    public init(profile: String, user: String? = nil, minimumLifetime: TimeInterval = TokenPolicy.defaultMinimumLifetime,
        allowRefresh: Bool = true, force: Bool = false)
    {
        self.profile = profile
        self.user = user
        self.minimumLifetime = minimumLifetime
        self.allowRefresh = allowRefresh
        self.force = force
    }
}

/// Hands out valid tokens: from the vault when they are fresh enough, else
/// renewed from Tallyfy under the vault lock and sealed at once.
///
/// This is the library entry point for Swift programs as much as for the CLI:
///
/// ```swift
/// let broker = TokenBroker(store: VaultStore(path: path), secrets: try sources.secretsToOpen())
/// let grant = try await broker.grant(TokenRequest(profile: "default", minimumLifetime: 3600))
/// ```
public struct TokenBroker: Sendable {
    public let store: VaultStore
    public let secrets: [UnlockSecret]
    public let environment: [String: String]

    public init(store: VaultStore, secrets: [UnlockSecret], environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.store = store
        self.secrets = secrets
        self.environment = environment
    }

    private var now: Date { VaultClock.now(environment: environment) }

    /// A valid token: the sealed one when fresh, else a renewed one.
    public func grant(_ request: TokenRequest) async throws -> TokenGrant {
        if let grant = try sealedGrant(request) { return grant }
        return try await renewedGrant(request)
    }

    /// The fast path, with no lock, no HTTP client and no event loop: the
    /// sealed token if it satisfies `request`, `nil` when it must be renewed.
    /// With `allowRefresh` false, a valid (not expired) token is returned and
    /// an expired or missing one is an error (78).
    public func sealedGrant(_ request: TokenRequest) throws -> TokenGrant? {
        guard !request.force else { return nil }
        let vault = try store.open(with: secrets)
        let profile = try Self.profile(request.profile, in: vault)
        let token = try sealedToken(request, in: vault)
        if TokenPolicy.isFresh(token, minimumLifetime: request.minimumLifetime, now: now) {
            return Self.grant(token!, profile: profile, request: request)
        }
        guard request.allowRefresh else {
            guard let token, TokenPolicy.isValid(token, now: now) else {
                throw VaultError(.configuration,
                    "no valid \(describe(request)) is sealed, and --no-refresh forbids asking Tallyfy for one",
                    hint: "run without --no-refresh, or `tallyfy-vault \(request.user == nil ? "login" : "users token \(request.user!)")`")
            }
            return Self.grant(token, profile: profile, request: request)
        }
        return nil
    }

    /// Renews the token under the vault lock. Another process may have done it
    /// while we waited for the lock; then its token is used and Tallyfy is not
    /// asked again.
    public func renewedGrant(_ request: TokenRequest) async throws -> TokenGrant {
        let seen: SealedToken? = try? sealedToken(request, in: store.open(with: secrets))
        return try await Self.withClient { client in
            try await store.update(with: secrets) { vault in
                try await renew(request, seen: seen, in: vault, client: client)
            }
        }
    }

    /// Runs `body` with a Tallyfy client that is shut down afterwards, on
    /// success and failure alike (AsyncHTTPClient requires it).
    static func withClient<T>(_ body: (TallyfyClient) async throws -> T) async throws -> T {
        let client = TallyfyClient()
        do {
            let result = try await body(client)
            await client.shutdown()
            return result
        } catch {
            await client.shutdown()
            throw error
        }
    }

    private func renew(_ request: TokenRequest, seen: SealedToken?, in vault: UnlockedVault, client: TallyfyClient) async throws -> TokenGrant {
        var profile = try Self.profile(request.profile, in: vault)
        let current = try sealedToken(request, in: vault)
        if !request.force && TokenPolicy.canReuse(current, seen: seen, minimumLifetime: request.minimumLifetime, now: now) {
            return Self.grant(current!, profile: profile, request: request)
        }
        let applicationToken = try await applicationToken(
            for: request, profile: &profile, in: vault, client: client)
        guard let email = request.user else {
            return Self.grant(applicationToken, profile: profile, request: request)
        }
        let apiURL = try EndpointURL.validate(profile.apiURL, name: "API URL")
        let issuedAt = now
        let issued = try await client.userToken(
            apiURL: apiURL, orgID: profile.orgID, applicationToken: applicationToken.value, email: email, now: issuedAt)
        let token = SealedToken(value: issued.accessToken, expiresAt: issued.expiresAt, obtainedAt: issuedAt)
        let storedEmail = try vault.userToken(profile: request.profile, email: email)?.email ?? email
        try vault.setUserToken(UserTokenRecord(profile: request.profile, email: storedEmail, token: token))
        return Self.grant(token, profile: profile, request: request)
    }

    /// The application token to use: the sealed one when it is still good for
    /// the request (for a user token it only has to outlive the call), else a
    /// new one from the client-credentials flow, sealed into `vault`.
    private func applicationToken(
        for request: TokenRequest, profile: inout Profile, in vault: UnlockedVault, client: TallyfyClient
    ) async throws -> SealedToken {
        let needed = request.user == nil ? request.minimumLifetime : Self.applicationTokenMarginForUserCalls
        if let token = profile.applicationToken, !(request.force && request.user == nil),
            TokenPolicy.isFresh(token, minimumLifetime: needed, now: now)
        {
            return token
        }
        let tokenURL = try EndpointURL.validate(profile.tokenURL, name: "token URL")
        let issuedAt = now
        let issued = try await client.applicationToken(
            tokenURL: tokenURL, clientID: profile.clientID, clientSecret: profile.clientSecret, now: issuedAt)
        let token = SealedToken(value: issued.accessToken, expiresAt: issued.expiresAt, obtainedAt: issuedAt)
        profile.applicationToken = token
        vault.content.profiles[request.profile] = profile
        return token
    }

    /// An application token used only to issue a user token must outlive the call.
    static let applicationTokenMarginForUserCalls: TimeInterval = 300

    private func sealedToken(_ request: TokenRequest, in vault: UnlockedVault) throws -> SealedToken? {
        let profile = try Self.profile(request.profile, in: vault)
        guard let email = request.user else { return profile.applicationToken }
        return try vault.userToken(profile: request.profile, email: email)?.token
    }

    private func describe(_ request: TokenRequest) -> String {
        request.user.map { "user token for \($0)" } ?? "application token for profile \"\(request.profile)\""
    }

    /// The profile's credentials, or the configuration error (78) that says how to add them.
    public static func profile(_ name: String, in vault: UnlockedVault) throws -> Profile {
        guard let profile = vault.content.profiles[name] else {
            throw VaultError(.configuration, "profile \"\(name)\" has no credentials in this vault",
                hint: "store them with `tallyfy-vault --profile \(name) credentials set --org ORG_ID --client-id ID`")
        }
        return profile
    }

    private static func grant(_ token: SealedToken, profile: Profile, request: TokenRequest) -> TokenGrant {
        TokenGrant(profile: request.profile, orgID: profile.orgID, apiURL: profile.apiURL, token: token.value,
            expiresAt: token.expiresAt, user: request.user)
    }
}

import Foundation
import TallyfyVaultCore

/// Renewing tokens: the part of `TokenBroker` that talks to Tallyfy, kept out
/// of the core module so the `exec` fast path does not link an HTTP stack.
extension TokenBroker {
    /// A valid token: the sealed one when fresh, else a renewed one. When
    /// renewing fails for a passing reason and the sealed token is still
    /// valid (`TokenPolicy.canFallBack`), that token, with the reason in
    /// `renewalFailure`; the failure is also recorded for `check`.
    public func grant(_ request: TokenRequest) async throws -> TokenGrant {
        if let grant = try sealedGrant(request) { return grant }
        do {
            return try await renewedGrant(request)
        } catch let error as VaultError {
            guard let fallback = try await fallbackGrant(request, after: error) else { throw error }
            return fallback
        }
    }

    private func fallbackGrant(_ request: TokenRequest, after error: VaultError) async throws -> TokenGrant? {
        let vault = try store.open(with: unlocker)
        let profile = try Self.profile(request.profile, in: vault)
        guard let token = try sealedToken(request, in: vault),
            TokenPolicy.canFallBack(token, after: error, request: request, now: now)
        else { return nil }
        await recordRenewalFailure(profile: request.profile, reason: error.message)
        var grant = Self.grant(token, profile: profile, request: request)
        grant.renewalFailure = error.message
        return grant
    }

    /// Best effort, and never waiting: a lock held elsewhere means someone
    /// else is renewing, and the token is being handed out either way.
    private func recordRenewalFailure(profile name: String, reason: String) async {
        var impatient = store
        impatient.lockTimeout = .zero
        _ = try? await impatient.update(with: unlocker) { vault in
            vault.content.profiles[name]?.lastRenewalFailure = RenewalFailure(at: now, reason: reason)
        }
    }

    /// Renews the token under the vault lock. Another process may have done it
    /// while we waited for the lock; then its token is used and Tallyfy is not
    /// asked again.
    public func renewedGrant(_ request: TokenRequest) async throws -> TokenGrant {
        let seen: SealedToken? = try? sealedToken(request, in: store.open(with: unlocker))
        return try await Self.withClient { client in
            try await store.update(with: unlocker) { vault in
                try await renew(request, seen: seen, in: vault, client: client)
            }
        }
    }

    /// Runs `body` with the process's one Tallyfy client (`TallyfyClient.shared`),
    /// so renewing many tokens (the agent, `check --refresh`) reuses its
    /// connections; the program shuts it down once, at its end.
    package static func withClient<T>(_ body: (TallyfyClient) async throws -> T) async throws -> T {
        try await body(TallyfyClient.shared)
    }

    private func renew(_ request: TokenRequest, seen: SealedToken?, in vault: UnlockedVault, client: TallyfyClient) async throws -> TokenGrant {
        var profile = try Self.profile(request.profile, in: vault)
        let current = try sealedToken(request, in: vault)
        if request.renewal != .always && TokenPolicy.canReuse(current, seen: seen, minimumLifetime: request.minimumLifetime, now: now) {
            return Self.grant(current!, profile: profile, request: request)
        }
        let applicationToken = try await applicationToken(
            for: request, profile: &profile, in: vault, client: client)
        if profile.lastRenewalFailure != nil {
            profile.lastRenewalFailure = nil  // this renewal worked
            vault.content.profiles[request.profile] = profile
        }
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
        if let token = profile.applicationToken, !(request.renewal == .always && request.user == nil),
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
}

import Foundation
import Synchronization
import TallyfyVaultCore

/// Renewing tokens: the part of `TokenBroker` that talks to Tallyfy, kept out
/// of the core module so the `exec` fast path does not link an HTTP stack.
extension TokenBroker {
    /// A valid token: the sealed one when fresh, else a renewed one. When
    /// renewing fails for a passing reason and the sealed token is still
    /// valid (`TokenPolicy.canFallBack`), that token, with the reason in
    /// `renewalFailure`; the failure is also recorded for `check`.
    public func grant(_ request: TokenRequest) async throws -> TokenGrant {
        try await grant(request, from: open(store.read()))
    }

    /// The one hand-out decision, on a vault this pass has already read and
    /// opened: every consumer (`exec`, `token` and its helper format,
    /// `export`, the agent, keep-fresh) comes here, so they all decide alike.
    ///
    /// - fresh enough: handed out, nothing else read;
    /// - stale: renewed under the vault lock, where the vault is read again
    ///   (that is the pass's second read) and another process's renewal is
    ///   taken instead of asking Tallyfy twice;
    /// - renewal failed, or did not finish within `deadline`: one rule,
    ///   `TokenPolicy.canFallBack` (passing reasons only, never with
    ///   `--strict-ttl`, more than a minute left), then the sealed token is
    ///   handed out with the reason in `renewalFailure`; else the error.
    package func grant(_ request: TokenRequest, from vault: UnlockedVault, deadline: Duration? = nil) async throws -> TokenGrant {
        if let grant = try decideSealed(request, in: vault) { return try handedOut(grant) }
        return try handedOut(
            await renewOrRideOut(request, seen: try sealedToken(request, in: vault)?.identity, deadline: deadline) { vault })
    }

    /// The rest of a pass the launcher began: it read and opened the vault,
    /// found the sealed token too old and handed over which one it saw
    /// (`Handover.seen`), so this goes straight to the renewal under the
    /// lock. Only a failure that may be ridden out reads the vault before that.
    package func grant(_ request: TokenRequest, handedOver seen: SealedToken.Identity?, deadline: Duration? = nil) async throws -> TokenGrant {
        try handedOut(await renewOrRideOut(request, seen: seen, deadline: deadline) { try await open(store.read()) })
    }

    private func renewOrRideOut(
        _ request: TokenRequest, seen: SealedToken.Identity?, deadline: Duration?, readBefore: () async throws -> UnlockedVault
    ) async throws -> TokenGrant {
        do {
            return try await withDeadline(deadline) { try await renewedGrant(request, seen: seen) }
        } catch let error as VaultError {
            // The lock, the location or the deadline failed before the vault
            // could be read again: ride out on the token the pass read before.
            guard request.renewal == .whenStale, TokenPolicy.isPassing(error), let vault = try? await readBefore(),
                let token = try sealedToken(request, in: vault), TokenPolicy.canFallBack(token, after: error, request: request, now: now)
            else { throw error }
            return Self.degraded(token, profile: try Self.profile(request.profile, in: vault), request: request, reason: error.message)
        }
    }

    /// Renews the token under the vault lock. Another process may have done it
    /// while we waited for the lock; then its token is used and Tallyfy is not
    /// asked again. `seen` is the token read before waiting for the lock.
    package func renewedGrant(_ request: TokenRequest, seen: SealedToken.Identity? = nil) async throws -> TokenGrant {
        // The write this may make is recorded as a renewal of this profile's (or user's) token.
        try await AuditTrail.$note.withValue(AuditTrail.Note(what: "renewal", profile: request.profile, user: request.user)) {
            try await renewedGrantUnderLock(request, seen: seen)
        }
    }

    private func renewedGrantUnderLock(_ request: TokenRequest, seen: SealedToken.Identity?) async throws -> TokenGrant {
        try await Self.withClient { client in
            try await store.update(with: unlocker) { vault in
                let current = try sealedToken(request, in: vault)
                do {
                    return try await renew(request, seen: seen, in: vault, client: client)
                } catch let error as VaultError {
                    guard let current, TokenPolicy.canFallBack(current, after: error, request: request, now: now) else { throw error }
                    // Recorded for `check` in the same write (whatever this
                    // renewal did get, an application token, is kept too).
                    vault.content.profiles[request.profile]?.lastRenewalFailure = RenewalFailure(at: now, reason: Self.clearReason(error))
                    return Self.degraded(current, profile: try Self.profile(request.profile, in: vault), request: request, reason: error.message)
                }
            }
        }
    }

    /// What the clear summary says of a failed renewal: its kind, never the
    /// message, which names Tallyfy's host (SECURITY.md: the header holds
    /// no URL). The warning line of the command that failed has the detail.
    static func clearReason(_ error: VaultError) -> String {
        error.kind == .tryLater
            ? "Tallyfy asked to slow down (429) or another process held the vault lock"
            : "Tallyfy could not be reached, timed out or answered with a server error"
    }

    private static func degraded(_ token: SealedToken, profile: Profile, request: TokenRequest, reason: String) -> TokenGrant {
        var grant = Self.grant(token, profile: profile, request: request)
        grant.renewalFailure = reason
        return grant
    }

    /// `body`, or a passing failure (69) once `deadline` has passed. The body
    /// is abandoned, not stopped: callers with a deadline (the helper) end
    /// their process soon after, which releases the vault lock; a write in
    /// flight leaves the old vault or the new one.
    private func withDeadline(_ deadline: Duration?, _ body: @escaping @Sendable () async throws -> TokenGrant) async throws -> TokenGrant {
        guard let deadline else { return try await body() }
        return try await FirstAnswer.of(body) { _ in
            try? await Task.sleep(for: deadline)
            throw VaultError(.unavailable, "Tallyfy did not answer within \(DurationText.format(deadline.seconds))",
                hint: "run `tallyfy-vault doctor` to see why, and `tallyfy-vault login` once Tallyfy answers")
        }
    }

    /// Runs `body` with the process's one Tallyfy client (`TallyfyClient.shared`),
    /// so renewing many tokens (the agent, `check --refresh`) shares its event
    /// loop and settings (each request still has a connection of its own:
    /// `TallyfyClient.init`); the program shuts it down once, at its end.
    package static func withClient<T>(_ body: (TallyfyClient) async throws -> T) async throws -> T {
        try await body(client ?? TallyfyClient.shared)
    }

    /// The client this task's renewals use instead of the shared one: unit
    /// tests set one whose `TallyfyTransport` is a scripted Tallyfy.
    @TaskLocal static var client: TallyfyClient?

    private func renew(_ request: TokenRequest, seen: SealedToken.Identity?, in vault: UnlockedVault, client: TallyfyClient) async throws -> TokenGrant {
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
            AuditTrail.note?.sealed(applicationToken.value)
            return Self.grant(applicationToken, profile: profile, request: request)
        }
        let apiURL = try EndpointURL.validate(profile.apiURL, name: "API URL")
        let firstAsked = now
        var issuedAt = firstAsked
        let issued: IssuedToken
        do {
            issued = try await patiently(in: vault, profile: request.profile, what: "the user-token request") { [profile] in
                try await client.userToken(
                    apiURL: apiURL, orgID: profile.orgID, applicationToken: applicationToken.value, email: email, now: firstAsked)
            }
        } catch let error as VaultError where error.cause == .tallyfyRejectedApplicationToken {
            // The application token was good when the call began but not when
            // it arrived: it expired on a slow or briefly cut link (found by
            // tools/partition-test: a client cut from Tallyfy for 10 s with
            // 12-second tokens), or Tallyfy revoked it. Renew it once, still
            // under the lock, and ask again; a second 401 is the answer.
            let renewed = try await self.applicationToken(
                for: request, profile: &profile, in: vault, client: client, renewingRegardless: true)
            let again = now
            issuedAt = again
            issued = try await patiently(in: vault, profile: request.profile, what: "the user-token request") { [profile] in
                try await client.userToken(
                    apiURL: apiURL, orgID: profile.orgID, applicationToken: renewed.value, email: email, now: again)
            }
        }
        let token = SealedToken(value: issued.accessToken, expiresAt: issued.expiresAt, obtainedAt: issuedAt)
        let storedEmail = try vault.userToken(profile: request.profile, email: email)?.email ?? email
        try vault.setUserToken(UserTokenRecord(profile: request.profile, email: storedEmail, token: token))
        AuditTrail.note?.sealed(token.value)
        return Self.grant(token, profile: profile, request: request)
    }

    /// The application token to use: the sealed one when it is still good for
    /// the request (for a user token it only has to outlive the call), else a
    /// new one from the client-credentials flow, sealed into `vault`.
    private func applicationToken(
        for request: TokenRequest, profile: inout Profile, in vault: UnlockedVault, client: TallyfyClient,
        renewingRegardless: Bool = false
    ) async throws -> SealedToken {
        if !renewingRegardless, let token = profile.applicationToken, !(request.renewal == .always && request.user == nil),
            TokenPolicy.isFresh(
                token,
                minimumLifetime: request.user == nil
                    ? request.minimumLifetime : Self.applicationTokenMargin(forUserCallsWith: token),
                now: now)
        {
            return token
        }
        let tokenURL = try EndpointURL.validate(profile.tokenURL, name: "token URL")
        let issuedAt = now
        let issued = try await patiently(in: vault, profile: request.profile, what: "the token request") { [profile] in
            try await client.applicationToken(
                tokenURL: tokenURL, clientID: profile.clientID, clientSecret: profile.clientSecret, now: issuedAt)
        }
        let token = SealedToken(value: issued.accessToken, expiresAt: issued.expiresAt, obtainedAt: issuedAt)
        profile.applicationToken = token
        vault.content.profiles[request.profile] = profile
        return token
    }
}

extension TokenBroker {
    /// `call`, a request to Tallyfy made while this process holds the vault
    /// lock, given up (69) once it has taken as long as
    /// `TokenPolicy.patienceUnderLock` allows for the application token
    /// sealed in `vault`: the lock is then free while another process or
    /// machine that can reach Tallyfy still has time to renew that token. The
    /// call is cancelled, not abandoned, so the lock is released when this returns.
    /// When this process last gave up on Tallyfy under the lock of each
    /// vault location, and until when it does not ask again
    /// (`TokenPolicy.deferralAfterGivingUp`). Found by tools/partition-test:
    /// an agent cut from Tallyfy gave up on a client's renewal, then took
    /// the fleet lock again at once for its own and waited out its patience
    /// a second time; the machine that could renew got the lock 0.47 s
    /// before the token expired.
    private static let lastGiveUp = Mutex<[String: (until: ContinuousClock.Instant, waited: TimeInterval)]>([:])

    package func patiently<T: Sendable>(
        in vault: UnlockedVault, profile: String, what: String, _ call: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let sealed = vault.content.profiles[profile]?.applicationToken
        guard let patience = TokenPolicy.patienceUnderLock(applicationToken: sealed, now: now) else { return try await call() }
        let location = store.locationText
        if let last = Self.lastGiveUp.withLock({ $0[location] }), ContinuousClock.now < last.until {
            throw VaultError(.unavailable,
                "Tallyfy did not answer this process's previous call within \(String(format: "%.1f", last.waited)) s either; "
                    + "not asking again at once, so that another process or machine can renew the token before it expires",
                hint: "check this machine's way to Tallyfy (`tallyfy-vault doctor`); the next attempt takes the token another one renewed")
        }
        let answerBy = ContinuousClock.now + .milliseconds(Int64(patience * 1000))
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await TallyfyClient.$answerBy.withValue(answerBy) { try await call() } }
            group.addTask {
                try await Task.sleep(for: .milliseconds(Int64(patience * 1000)))
                return nil
            }
            defer { group.cancelAll() }
            if let first = try await group.next(), let answer = first {
                Self.lastGiveUp.withLock { $0[location] = nil }
                return answer
            }
            let until = ContinuousClock.now + .milliseconds(Int64(TokenPolicy.deferralAfterGivingUp(waited: patience) * 1000))
            Self.lastGiveUp.withLock { $0[location] = (until, patience) }
            throw VaultError(.unavailable,
                "Tallyfy did not answer \(what) within \(String(format: "%.1f", patience)) s, what the vault lock may be held for with the sealed application token's life left; "
                    + "gave up so that another process or machine can renew it before it expires",
                hint: "check this machine's way to Tallyfy (`tallyfy-vault doctor`); the next attempt takes the token another one renewed")
        }
    }
}

extension Duration {
    fileprivate var seconds: TimeInterval {
        TimeInterval(components.seconds) + TimeInterval(components.attoseconds) / 1e18
    }
}

import Foundation
import TallyfyVaultCore

extension TokenBroker {
    /// Replaces the client secret of `profile`. Unless `verify` is false, the
    /// new secret is first proven by obtaining an application token with it;
    /// only then are the secret and that token sealed, under the vault lock.
    /// Any failure leaves the vault as it was. Returns the new token, if any.
    package func rotateSecret(profile name: String, newSecret: String, verify: Bool) async throws -> SealedToken? {
        try Credentials.checkSecret(newSecret, what: "the new client secret")
        // The secret this rotation replaces, as it was when the rotation
        // started (before waiting for the lock). Under the lock it must still
        // be the same: two rotations at once must not both succeed with the
        // last one silently winning.
        let startedAgainst = try Self.profile(name, in: try await store.open(with: unlocker)).clientSecret
        return try await Self.withClient { client in try await store.update(with: unlocker) { vault in
            var profile = try Self.profile(name, in: vault)
            let unchanged = Array(profile.clientSecret.utf8).withUnsafeBytes { current in
                Array(startedAgainst.utf8).withUnsafeBytes { started in Sodium.equal(current, started) }
            }
            guard unchanged else {
                throw VaultError(.tryLater,
                    "the client secret of profile \"\(name)\" was changed by another process while this rotation waited; nothing was changed",
                    hint: "check which secret Tallyfy now accepts (`tallyfy-vault login`) before rotating again")
            }
            let same = Array(profile.clientSecret.utf8).withUnsafeBytes { old in
                Array(newSecret.utf8).withUnsafeBytes { new in Sodium.equal(old, new) }
            }
            guard !same else {
                throw VaultError(.usage, "the new client secret is the one already stored; nothing was changed")
            }
            var token: SealedToken? = nil
            if verify {
                let tokenURL = try EndpointURL.validate(profile.tokenURL, name: "token URL")
                let issuedAt = VaultClock.now(environment: environment)
                let issued = try await patiently(in: vault, profile: name, what: "the token request with the new secret") { [profile] in
                    try await client.applicationToken(
                        tokenURL: tokenURL, clientID: profile.clientID, clientSecret: newSecret, now: issuedAt)
                }
                token = SealedToken(value: issued.accessToken, expiresAt: issued.expiresAt, obtainedAt: issuedAt)
            }
            profile.clientSecret = newSecret
            profile.secretSetAt = VaultClock.now(environment: environment)
            // An unverified rotation keeps the old token: it stays valid until
            // it expires, while the new secret is unproven.
            if let token { profile.applicationToken = token }
            vault.content.profiles[name] = profile
            return token
        } }
    }

    /// Renews, for `check --refresh`, every token of `profiles` that is inside
    /// its warning window. Returns what failed (already described), so the
    /// check can report it and still show what is left.
    package func renewExpiring(profiles: [String]?, thresholds: HealthCheck.Thresholds) async -> [HealthCheck.Problem] {
        var failures: [HealthCheck.Problem] = []
        let vault: UnlockedVault
        do { vault = try await store.open(with: unlocker) } catch let error as VaultError {
            return [HealthCheck.Problem(status: .unknown, profile: nil, kind: "vault", message: "could not open the vault to refresh: \(error.message)")]
        } catch {
            return [HealthCheck.Problem(status: .unknown, profile: nil, kind: "vault", message: "could not open the vault to refresh")]
        }
        // A token inside the critical window is renewed too, even when
        // `--critical-before` is longer than `--warn-before`.
        let renewApplication = max(thresholds.warnApplication, thresholds.critical)
        let renewUser = max(thresholds.warnUser, thresholds.critical)
        for name in profiles ?? vault.content.profiles.keys.sorted() {
            guard vault.content.profiles[name] != nil else { continue }
            do {
                // Strictly: a renewal that fails is what check must report.
                _ = try await grant(TokenRequest(profile: name, minimumLifetime: renewApplication, renewal: .whenStaleStrictly))
            } catch {
                failures.append(Self.refreshProblem(error, profile: name, what: "the application token"))
                continue
            }
            let now = VaultClock.now(environment: environment)
            let expiring = (try? vault.userTokens(profile: name))?.filter {
                $0.token.expiresAt.timeIntervalSince(now) <= renewUser
            } ?? []
            for record in expiring {
                do {
                    _ = try await renewedGrant(TokenRequest(profile: name, user: record.email, renewal: .always))
                } catch {
                    failures.append(Self.refreshProblem(error, profile: name, what: "the token of \(record.email)"))
                }
            }
        }
        return failures
    }

    private static func refreshProblem(_ error: any Error, profile: String, what: String) -> HealthCheck.Problem {
        let reason = (error as? VaultError)?.message ?? "unexpected error"
        return HealthCheck.Problem(status: .warning, profile: profile, kind: "refresh",
            message: "profile \(profile): could not renew \(what): \(reason)")
    }
}

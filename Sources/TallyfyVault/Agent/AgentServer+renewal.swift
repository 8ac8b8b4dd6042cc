import Foundation
import Synchronization
import TallyfyVaultCore

/// The background renewal scheduler: each tick renews what is due, and
/// retries what failed, on the schedule `exec --keep-fresh` uses.
extension AgentServer {
    // MARK: - Background renewal

    func tick() async {
        let now = self.now
        if state.withLock({ $0.unlocker == nil }) { dropHeldVault() }
        if let idle = configuration.idleTimeout, now.timeIntervalSince(state.withLock { $0.lastUsed }) >= idle {
            lock(reason: "no token was asked for in \(DurationText.format(idle)) (--idle-timeout)")
        }
        if let lifetime = configuration.maxLifetime, now.timeIntervalSince(startedAt) >= lifetime {
            lock(reason: "running for \(DurationText.format(lifetime)) (--max-lifetime)")
        }
        // The held vault tells what is due; it is re-read only when its file changed.
        guard let (unlocker, held, nearUsers) = await withHeldVault({ vault, unlocker in
            let summary = vault.summary()
            let near = summary.profiles.filter { _, profile in
                profile.earliestUserTokenExpiresAt.map { $0.timeIntervalSince(now) <= Self.longestUserMargin } ?? false
            }
            return (unlocker, vault, Set(near.keys))
        }) else { return }
        let profiles = held.content.profiles
        // Nothing handed to anyone: the renewal's write is recorded as a change.
        let broker = TokenBroker(store: store, unlocker: unlocker, environment: configuration.environment).recording(.none)
        for (name, profile) in profiles.sorted(by: { $0.key < $1.key }) {
            if let token = profile.applicationToken {
                await renewIfDue(key: name, token: token, what: "the application token of profile \(name)", now: now, broker: broker, vault: held) {
                    TokenRequest(profile: name, minimumLifetime: $0, renewal: .whenStaleStrictly)
                }
            }
            // User records are opened only when the earliest is near its
            // window, and in a copy of their own: opening thousands of them
            // under the state lock would hold up every client meanwhile.
            guard nearUsers.contains(name), let vault = try? await store.open(with: unlocker) else { continue }
            for record in (try? vault.userTokens(profile: name)) ?? [] {
                await renewIfDue(key: name + "\u{0}" + record.email, token: record.token, what: "the token of \(record.email)", now: now, broker: broker, vault: vault) {
                    TokenRequest(profile: name, user: record.email, minimumLifetime: $0, renewal: .whenStaleStrictly)
                }
            }
        }
    }

    /// The longest lead the schedule gives a 90-day user token: user records
    /// further from expiry than this are not opened by the renewal loop.
    static let longestUserMargin: TimeInterval = 90 * 86_400 * (schedule.fractionLeft + schedule.jitter)

    private func renewIfDue(
        key: String, token: SealedToken, what: String, now: Date, broker: TokenBroker, vault: UnlockedVault,
        request: (TimeInterval) -> TokenRequest
    ) async {
        let life = max(1, token.expiresAt.timeIntervalSince(token.obtainedAt))
        let due = state.withLock { state -> Date in
            if let known = state.due[key], known.token == token.value { return known.at }
            let at = Self.schedule.renewalDate(expiresAt: token.expiresAt, receivedAt: token.obtainedAt, minimumLifetime: 0,
                random: Double.random(in: 0...1))
            state.due[key] = (token.value, at)
            return at
        }
        guard now >= due else { return }
        if let retry = state.withLock({ $0.retry[key] }), now < retry.at { return }
        // Renew when less than the whole margin is left; another process may
        // have renewed already, and then the broker takes its token.
        let margin = token.expiresAt.timeIntervalSince(due) + 1
        do {
            let wanted = request(margin)
            // Decided on the vault in hand: the renewal reads it again only under the lock.
            let grant = try await renewalTurn.run { try await broker.grant(wanted, from: vault) }
            state.withLock {
                $0.retry[key] = nil
                if grant.token != token.value { $0.renewals += 1 }
            }
            if grant.token != token.value {
                log("renewed \(what), valid until \(ChildEnvironment.rfc3339(grant.expiresAt))")
            }
        } catch {
            let reason = (error as? VaultError)?.message ?? "unexpected error"
            let retryAt = state.withLock { state -> Date in
                let attempt = (state.retry[key]?.attempt ?? 0) + 1
                let at = Self.schedule.retryDate(afterFailure: attempt, lifetime: life, expiresAt: token.expiresAt, now: now)
                state.retry[key] = (at, attempt)
                return at
            }
            log("could not renew \(what): \(reason); trying again in \(DurationText.format(max(1, retryAt.timeIntervalSince(now).rounded()))), the sealed token stays valid until \(ChildEnvironment.rfc3339(token.expiresAt))")
        }
    }
}

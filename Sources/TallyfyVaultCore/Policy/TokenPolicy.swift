#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// When a sealed token is good enough to hand out, and when it must be renewed.
public enum TokenPolicy {
    /// `--min-ttl` when neither the flag nor `TALLYFY_VAULT_MIN_TTL` is given.
    public static let defaultMinimumLifetime: TimeInterval = 3600

    /// Usable without contacting Tallyfy: at least `minimumLifetime` left.
    package static func isFresh(_ token: SealedToken?, minimumLifetime: TimeInterval, now: Date) -> Bool {
        guard let token else { return false }
        return token.expiresAt.timeIntervalSince(now) >= minimumLifetime
    }

    /// Not yet expired: what `--no-refresh` settles for.
    package static func isValid(_ token: SealedToken?, now: Date) -> Bool {
        guard let token else { return false }
        return token.expiresAt > now
    }

    /// Inside the lock, after reading the vault again: take the sealed token
    /// when it is fresh, or when another process renewed it since we looked
    /// (`seen` is what we read before waiting for the lock). That second rule
    /// is what makes a refresh single-flight even when `--min-ttl` is longer
    /// than Tallyfy's lifetime would allow.
    package static func canReuse(_ token: SealedToken?, seen: SealedToken.Identity?, minimumLifetime: TimeInterval, now: Date) -> Bool {
        if isFresh(token, minimumLifetime: minimumLifetime, now: now) { return true }
        guard let token, token.identity != seen else { return false }
        return isValid(token, now: now)
    }

    /// Degraded renewal: when renewing failed for a passing reason, a sealed
    /// token with more than this left is handed out anyway (with a warning),
    /// so a cron job does not fail because Tallyfy had a bad minute.
    package static let fallbackFloor: TimeInterval = 60

    /// The failures worth riding out on a still-valid token: Tallyfy
    /// unreachable, timing out or answering 5xx (69), or 429 / another
    /// process holding the lock (75). A refused secret (77) or a broken
    /// vault is never ridden out: someone must act.
    package static func isPassing(_ error: VaultError) -> Bool {
        error.kind == .unavailable || error.kind == .tryLater
    }

    /// Whether `token` may stand in for a renewal that failed with `error`.
    package static func canFallBack(_ token: SealedToken?, after error: VaultError, request: TokenRequest, now: Date) -> Bool {
        guard let token, request.renewal == .whenStale, isPassing(error) else { return false }
        return token.expiresAt.timeIntervalSince(now) > fallbackFloor
    }

    /// How long a call to Tallyfy made while holding the vault lock may
    /// take: half the life the sealed application token has left, but at
    /// least a twelfth of its whole lifetime (and a second), also once it
    /// has expired; `nil` (the client's own timeouts) when none is sealed.
    /// Every process and machine that needs a token waits for this lock, so
    /// a holder that cannot reach Tallyfy must let go while one that can
    /// still has time to renew before the token expires, and, once it has
    /// expired, soon. Found by tools/partition-test: a machine cut from
    /// Tallyfy but not from etcd held the fleet's lock until the 12-second
    /// token had expired for everyone, and for as long as the cut lasted.
    /// With Tallyfy's 7-day tokens (or any lasting more than a few minutes)
    /// both bounds are longer than the client's own timeouts: nothing changes.
    package static func patienceUnderLock(applicationToken token: SealedToken?, now: Date) -> TimeInterval? {
        guard let token else { return nil }
        let left = token.expiresAt.timeIntervalSince(now)
        let lifetime = token.expiresAt.timeIntervalSince(token.obtainedAt)
        return max(left / 2, lifetime / 12, minimumPatienceUnderLock)
    }

    /// After a call under the lock gave up (`patienceUnderLock`), how long
    /// the same process gives up on the next one at once instead of asking
    /// Tallyfy again: as long as it has just waited in vain, at most
    /// `longestDeferral`. Each call under the lock holds the fleet's lock;
    /// a process that has just learned that Tallyfy does not answer it would
    /// otherwise hold the lock for another whole patience while machines that
    /// can reach Tallyfy wait for it.
    package static func deferralAfterGivingUp(waited patience: TimeInterval) -> TimeInterval {
        min(patience, longestDeferral)
    }

    package static let longestDeferral: TimeInterval = 30

    /// The least `patienceUnderLock` allows: a token about to expire is not
    /// worth giving up a call Tallyfy is about to answer.
    package static let minimumPatienceUnderLock: TimeInterval = 1

    /// The minimum lifetime from `--min-ttl`, else `TALLYFY_VAULT_MIN_TTL`, else 1h.
    package static func minimumLifetime(option: String?, environment: [String: String]) throws -> TimeInterval {
        if let option { return try DurationText.parse(option) }
        if let value = environment["TALLYFY_VAULT_MIN_TTL"], !value.isEmpty { return try DurationText.parse(value) }
        return defaultMinimumLifetime
    }
}

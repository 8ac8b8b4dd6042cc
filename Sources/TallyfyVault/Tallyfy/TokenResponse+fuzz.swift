import Foundation
import TallyfyVaultCore

extension FuzzEntry {
    /// The receipt times a token answer is read at: the targets' fixed now,
    /// and the edges of the dates a vault holds, where a lifetime added to
    /// the receipt time leaves the range.
    static let receiptClocks: [Date] = [
        fixedNow, Date(timeIntervalSince1970: VaultBounds.earliestDate),
        Date(timeIntervalSince1970: VaultBounds.latestDate - 60), Date(timeIntervalSince1970: VaultBounds.latestDate),
    ]

    /// A token endpoint's answer body, read as `TallyfyClient` reads it
    /// (`token(from:endpoint:receivedAt:)`): `TokenResponse.decode`, then
    /// `issued(receivedAt:)` at each receipt clock; and as an error answer
    /// (`errorCode(in:)`, `fieldErrors(in:)`, `ServerDetail`). Refusing the
    /// body is the expected answer to junk; a crash or trap is a finding, and
    /// so is a token accepted, at any receipt clock, with an expiry the vault
    /// promises to refuse (checked here with `precondition`): a date the vault
    /// cannot hold, more than 10 years after its receipt or later than
    /// `expires_in` says, or, without a JWT `exp`, less than 1 s after it. (A
    /// JWT `exp` already past is kept on purpose: the token is renewed at its
    /// next use.) The outcome is the one at `fixedNow`.
    @discardableResult
    package static func tokenResponse(_ body: Data) -> Outcome {
        _ = errorCode(in: body)
        _ = fieldErrors(in: body)
        _ = ServerDetail(body: body, requestID: nil, redacting: ["fuzz-secret"]).suffix
        guard let response = TokenResponse.decode(body) else {
            return Outcome(expect: "refused", stage: "decode", message: "not a usable token answer")
        }
        precondition(TokenResponse.isPlausibleToken(response.accessToken), "an implausible access token was accepted")
        if let expiresIn = response.expiresIn {
            precondition(TokenResponse.lifetimes.contains(TimeInterval(expiresIn)), "expires_in \(expiresIn) was accepted")
        }
        let jwtExpiry = TokenExpiry.jwtExpiry(of: response.accessToken)
        var acceptedAtFixedNow = false
        for now in receiptClocks {
            guard let issued = response.issued(receivedAt: now) else { continue }
            if now == fixedNow { acceptedAtFixedNow = true }
            let left = issued.expiresAt.timeIntervalSince(now)
            precondition(issued.accessToken == response.accessToken, "the token changed")
            precondition(VaultBounds.isValid(issued.expiresAt), "an expiry the vault cannot hold was accepted")
            precondition(left <= VaultBounds.maximumTokenLifetime, "an expiry more than 10 years ahead was accepted")
            if let expiresIn = response.expiresIn {
                precondition(left <= TimeInterval(expiresIn), "an expiry later than expires_in was accepted")
            }
            if let jwtExpiry {
                precondition(issued.expiresAt <= jwtExpiry, "an expiry later than the JWT exp was accepted")
            } else {
                precondition(left >= VaultBounds.minimumTokenLifetime, "an expiry under 1 s was accepted")
            }
            _ = ChildEnvironment.rfc3339(issued.expiresAt)
            _ = Lifetime.describe(issued.expiresAt, now: now)
        }
        // The outcome is the one at `fixedNow`; the other clocks only check bounds.
        return acceptedAtFixedNow
            ? Outcome(expect: "success", stage: "expiry", message: "")
            : Outcome(expect: "refused", stage: "expiry", message: "no expiry within 1 s to 10 years of its receipt")
    }
}

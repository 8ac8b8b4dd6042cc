import Foundation
import Testing

/// `users token` and the application token it is issued with, when that
/// token is short-lived: both found by tools/partition-test, whose fleet
/// runs on 12-second tokens (docs/fleet.md).
@Suite(.serialized) struct UserTokenRenewalTests {
    let client = "client-users"
    let secret = "users-secret-1"

    /// Logged in with a user, the vault's clock stopped (so however slowly
    /// the machine runs, the sealed token keeps all its life as far as the
    /// vault can tell), and the emulator's counts at zero.
    private func loggedInWithAUser(appTokenTTL: Int) async throws -> (Sandbox, Emulator) {
        let world = try await LoggedIn.start(secrets: [secret], client: client, appTokenTTL: appTokenTTL, login: false)
        world.sandbox.environment["TALLYFY_VAULT_TEST_NOW"] = String(Int(Date().timeIntervalSince1970))
        try world.sandbox.ok(["login"])
        try world.sandbox.ok(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"])
        // `users create` renews a token with less than five minutes left; start counting after it.
        try world.sandbox.ok(["login"])
        try await world.emulator.reset()
        return (world.sandbox, world.emulator)
    }

    /// A 280-second application token has far more than a quarter of its
    /// life left: three user tokens are issued with it and no token request
    /// is made (a flat five-minute margin renewed it every time, for the fleet).
    @Test func aFreshShortLivedApplicationTokenIsNotRenewedForEachUserToken() async throws {
        let (sandbox, emulator) = try await loggedInWithAUser(appTokenTTL: 280)
        defer { _ = emulator.stop() }
        for _ in 0..<3 { try sandbox.ok(["users", "token", "ann@example.com"]) }
        let counts = try await emulator.counts()
        #expect(counts["token"] == 0 && counts["users.token"] == 3, "\(counts)")
    }

    /// Tallyfy rejects the application token although the vault believes it
    /// fresh (here the emulator's clock moved past its expiry; in the
    /// partition test, a request held up by a cut arrived after it): the token
    /// is renewed once and the user token issued, not a 77.
    @Test func anApplicationTokenRejectedOnItsWayIsRenewedOnceAndTheCallRepeated() async throws {
        let (sandbox, emulator) = try await loggedInWithAUser(appTokenTTL: 280)
        defer { _ = emulator.stop() }
        try await emulator.advanceClock(by: 400)
        let issued = try sandbox.ok(["users", "token", "ann@example.com"])
        #expect(issued.stderr.contains("sealed a new token for ann@example.com"), "\(issued.stderr)")
        let counts = try await emulator.counts()
        #expect(counts["token"] == 1 && counts["users.token"] == 2, "\(counts)")
        // The renewed application token is sealed: the next one needs no renewal.
        try sandbox.ok(["users", "token", "ann@example.com"])
        #expect(try await emulator.counts()["token"] == 1)
    }

    /// A client whose credentials no longer work still ends 77 after the
    /// one renewal: the repeat is not a loop.
    @Test func aSecondRejectionIsTheAnswer() async throws {
        let (sandbox, emulator) = try await loggedInWithAUser(appTokenTTL: 280)
        defer { _ = emulator.stop() }
        try await emulator.advanceClock(by: 400)
        try await emulator.setSecrets(client: client, secrets: ["another-secret"])
        let before = try Data(contentsOf: URL(fileURLWithPath: sandbox.vaultPath))
        let refused = try sandbox.refused(["users", "token", "ann@example.com"], status: 77)
        #expect(refused.stderr.hasPrefix("tallyfy-vault: "), "\(refused.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: sandbox.vaultPath)) == before)
        #expect(try await emulator.counts()["token"] == 1)
    }
}

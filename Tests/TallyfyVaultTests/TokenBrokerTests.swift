import AsyncHTTPClient
import Foundation
import Synchronization
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

/// The broker's one rule, over a real file vault in a private folder, a
/// scripted Tallyfy (`TallyfyTransport`) and the vault's test clock
/// (`TALLYFY_VAULT_TEST_NOW`): fresh → the sealed token; stale → renewed
/// under the lock; renewal failed → ridden out only for a passing reason,
/// never with `--strict-ttl`, never on an expired token; else the error, and
/// the vault file byte-for-byte as it was.
@Suite struct TokenBrokerTests {
    /// What the scripted Tallyfy answers the token request with.
    enum Tallyfy: String, Sendable, CaseIterable {
        case token, invalidClient, unavailable, hangs
    }

    /// How much of the sealed application token's hour is left when asked
    /// for one with `BrokerVault.minimumLifetime` (30 minutes).
    enum Left: String, Sendable, CaseIterable {
        /// 50 minutes: more than asked for.
        case fresh
        /// 10 minutes: less than asked for, more than `TokenPolicy.fallbackFloor`.
        case staleButValid
        /// Expired 100 s ago.
        case expired
    }

    enum Outcome: Equatable, Sendable, CustomStringConvertible {
        /// The sealed token, Tallyfy not asked, the file untouched.
        case sealed
        /// Tallyfy's new token, sealed.
        case renewed
        /// The sealed token with the failure's reason (the one warning line),
        /// the failure recorded for `check`.
        case rodeOut
        /// This exit status, the file untouched.
        case fails(Int32)

        var description: String {
            switch self {
            case .sealed: "sealed"
            case .renewed: "renewed"
            case .rodeOut: "ride-out"
            case .fails(let status): "fails \(status)"
            }
        }
    }

    struct Row: Sendable, CustomTestStringConvertible {
        var tallyfy: Tallyfy
        var strictTTL: Bool
        var left: Left
        var outcome: Outcome
        var testDescription: String {
            "\(tallyfy.rawValue), \(strictTTL ? "--strict-ttl" : "lenient"), \(left.rawValue) → \(outcome)"
        }
    }

    /// The table, written out row by row (not computed by the rule it tests).
    static let table: [Row] = [
        Row(tallyfy: .token, strictTTL: false, left: .fresh, outcome: .sealed),
        Row(tallyfy: .token, strictTTL: true, left: .fresh, outcome: .sealed),
        Row(tallyfy: .token, strictTTL: false, left: .staleButValid, outcome: .renewed),
        Row(tallyfy: .token, strictTTL: true, left: .staleButValid, outcome: .renewed),
        Row(tallyfy: .token, strictTTL: false, left: .expired, outcome: .renewed),
        Row(tallyfy: .token, strictTTL: true, left: .expired, outcome: .renewed),

        Row(tallyfy: .invalidClient, strictTTL: false, left: .fresh, outcome: .sealed),
        Row(tallyfy: .invalidClient, strictTTL: true, left: .fresh, outcome: .sealed),
        Row(tallyfy: .invalidClient, strictTTL: false, left: .staleButValid, outcome: .fails(77)),
        Row(tallyfy: .invalidClient, strictTTL: true, left: .staleButValid, outcome: .fails(77)),
        Row(tallyfy: .invalidClient, strictTTL: false, left: .expired, outcome: .fails(77)),
        Row(tallyfy: .invalidClient, strictTTL: true, left: .expired, outcome: .fails(77)),

        Row(tallyfy: .unavailable, strictTTL: false, left: .fresh, outcome: .sealed),
        Row(tallyfy: .unavailable, strictTTL: true, left: .fresh, outcome: .sealed),
        Row(tallyfy: .unavailable, strictTTL: false, left: .staleButValid, outcome: .rodeOut),
        Row(tallyfy: .unavailable, strictTTL: true, left: .staleButValid, outcome: .fails(69)),
        Row(tallyfy: .unavailable, strictTTL: false, left: .expired, outcome: .fails(69)),
        Row(tallyfy: .unavailable, strictTTL: true, left: .expired, outcome: .fails(69)),

        Row(tallyfy: .hangs, strictTTL: false, left: .fresh, outcome: .sealed),
        Row(tallyfy: .hangs, strictTTL: true, left: .fresh, outcome: .sealed),
        Row(tallyfy: .hangs, strictTTL: false, left: .staleButValid, outcome: .rodeOut),
        Row(tallyfy: .hangs, strictTTL: true, left: .staleButValid, outcome: .fails(69)),
        Row(tallyfy: .hangs, strictTTL: false, left: .expired, outcome: .fails(69)),
        Row(tallyfy: .hangs, strictTTL: true, left: .expired, outcome: .fails(69)),
    ]

    @Test func theTableCoversEveryCase() {
        let covered = Set(Self.table.map { "\($0.tallyfy) \($0.strictTTL) \($0.left)" })
        #expect(covered.count == Self.table.count)
        #expect(covered.count == Tallyfy.allCases.count * 2 * Left.allCases.count)
    }

    @Test(arguments: table)
    func oneRule(_ row: Row) async throws {
        let vault = try await BrokerVault()
        defer { vault.remove() }
        let elapsed: TimeInterval =
            switch row.left {
            case .fresh: 600
            case .staleButValid: 3000
            case .expired: 3700
            }
        let now = vault.issuedAt.addingTimeInterval(elapsed)
        let tallyfy = ScriptedTallyfy(row.tallyfy)
        let before = try vault.bytes()
        let request = TokenRequest(profile: "default", minimumLifetime: BrokerVault.minimumLifetime,
            renewal: row.strictTTL ? .whenStaleStrictly : .whenStale)

        let result = await tallyfy.serving { try await vault.broker(now: now).grant(request) }

        switch row.outcome {
        case .sealed:
            let grant = try result.get()
            #expect(grant.token == BrokerVault.sealedToken && grant.renewalFailure == nil)
            #expect(tallyfy.requests == 0, "a fresh token needs no renewal")
            #expect(try vault.bytes() == before)
        case .renewed:
            let grant = try result.get()
            #expect(grant.token == ScriptedTallyfy.renewedToken && grant.renewalFailure == nil)
            #expect(grant.expiresAt == now.addingTimeInterval(3600))
            #expect(tallyfy.requests == 1)
            let sealed = try await vault.open(now: now).content.profiles["default"]?.applicationToken
            #expect(sealed?.value == ScriptedTallyfy.renewedToken, "the renewed token is sealed")
        case .rodeOut:
            let grant = try result.get()
            #expect(grant.token == BrokerVault.sealedToken)
            let reason = try #require(grant.renewalFailure, "a ride-out carries its reason: the one warning line")
            #expect(reason.contains("Tallyfy"))
            #expect(tallyfy.requests == 1)
            let recorded = try await vault.open(now: now).content.profiles["default"]?.lastRenewalFailure
            #expect(recorded?.at == now, "recorded for `check`")
        case .fails(let status):
            #expect(tallyfy.requests == 1)
            // The grant is never printed: it holds a token.
            if case .failure(let error) = result {
                #expect((error as? VaultError)?.exitStatus == status, "\(error)")
            } else {
                Issue.record("a token was handed out where the rule refuses one")
            }
            #expect(try vault.bytes() == before, "a refusal leaves the vault file byte-for-byte as it was")
        }
    }
}

/// A one-profile file vault in a private folder, its application token
/// issued at `issuedAt` for an hour.
struct BrokerVault {
    static let sealedToken = "sealed-application-token"
    static let minimumLifetime: TimeInterval = 1800

    let folder: String
    let path: String
    let key = TestKeys.keyFile(18)
    let issuedAt = Date(timeIntervalSince1970: 1_790_000_000)

    init() async throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("tv-broker-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        path = folder + "/vault.tfv"
        let vault = try UnlockedVault.create(secret: key, label: "key-file", kdf: .moderate)
        vault.content.profiles["default"] = TestKeys.profile(
            appToken: SealedToken(value: Self.sealedToken, expiresAt: issuedAt.addingTimeInterval(3600), obtainedAt: issuedAt))
        try await VaultStore(path: path, environment: environment(now: issuedAt)).create(vault)
    }

    /// Everything the vault reads from the environment points into `folder`:
    /// the generations it has seen and the audit log, and the test clock.
    func environment(now: Date) -> [String: String] {
        ["HOME": folder, "XDG_STATE_HOME": folder + "/state", "TALLYFY_VAULT_TEST_NOW": String(now.timeIntervalSince1970)]
    }

    func broker(now: Date) -> TokenBroker {
        let environment = environment(now: now)
        return TokenBroker(store: VaultStore(path: path, environment: environment), unlocker: VaultUnlocker(secrets: [key]),
            environment: environment)
    }

    func open(now: Date) async throws -> UnlockedVault {
        try await VaultStore(path: path, environment: environment(now: now)).open(with: VaultUnlocker(secrets: [key]))
    }

    func bytes() throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    func remove() { try? FileManager.default.removeItem(atPath: folder) }
}

/// Tallyfy's token endpoint as a `TallyfyTransport`: one scripted answer,
/// every request counted. Its client makes one attempt (`RetryPolicy.none`:
/// retries are the client's business, tested in RetryPolicyTests) and waits
/// 0.2 s for an answer.
final class ScriptedTallyfy: Sendable {
    static let renewedToken = "renewed-application-token"

    let answer: TokenBrokerTests.Tallyfy
    private let asked = Mutex(0)
    var requests: Int { asked.withLock { $0 } }

    init(_ answer: TokenBrokerTests.Tallyfy) { self.answer = answer }

    /// `body` with this Tallyfy behind every renewal it makes.
    func serving<T>(_ body: () async throws -> T) async -> Result<T, Error> {
        let client = TallyfyClient(connectTimeout: .milliseconds(200), requestTimeout: .milliseconds(200), retry: .none,
            environment: [:], sleep: { _ in }, transport: { [self] request in try await self.reply(to: request) })
        let result: Result<T, Error>
        do {
            result = .success(try await TokenBroker.$client.withValue(client) { try await body() })
        } catch {
            result = .failure(error)
        }
        await client.shutdown()
        return result
    }

    private func reply(to request: HTTPClientRequest) async throws -> Reply {
        asked.withLock { $0 += 1 }
        #expect(request.url == "http://127.0.0.1:1/oauth/token", "the profile's token URL")
        switch answer {
        case .token:
            return Reply(status: 200, contentType: "application/json",
                body: Data(#"{"access_token":"\#(Self.renewedToken)","token_type":"Bearer","expires_in":3600}"#.utf8))
        case .invalidClient:
            return Reply(status: 401, contentType: "application/json", body: Data(#"{"error":"invalid_client"}"#.utf8))
        case .unavailable:
            return Reply(status: 503, contentType: "text/plain", body: Data("down for maintenance".utf8))
        case .hangs:
            try await Task.sleep(for: .seconds(3600))  // cancelled when the client gives up
            throw CancellationError()
        }
    }
}

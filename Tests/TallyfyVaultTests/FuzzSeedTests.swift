import Foundation
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

/// The fuzzer's committed seeds (`FuzzSeeds/TARGET`;
/// SECURITY.md, "Fuzzing"), replayed through the same functions libFuzzer
/// calls, so every case issue 9 named and every finding `tools/fuzz` copied
/// here keeps running in `swift test`. A seed's name starts with the outcome
/// it must have (`success-`, `refused-`, `corrupt-`); a `crash-HASH` file,
/// as `tools/fuzz` names a new finding, only has to come back without a
/// crash. The vault target's seeds are the test vectors (`VectorTests`).
@Suite struct FuzzSeedTests {
    struct Seed: CustomTestStringConvertible, Sendable {
        var target: String
        var file: String
        var testDescription: String { "\(target)/\(file)" }
        /// The outcome its name promises, or `nil` for a finding.
        var expect: String? {
            let prefix = String(file.prefix { $0 != "-" })
            return prefix == "crash" ? nil : prefix
        }
    }

    static let folder: URL = Bundle.module.url(forResource: "FuzzSeeds", withExtension: nil)!

    static func seeds(_ target: String) -> [Seed] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.appendingPathComponent(target).path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { Seed(target: target, file: $0) }
    }

    static func outcome(_ seed: Seed) throws -> FuzzEntry.Outcome {
        let data = try Data(contentsOf: folder.appendingPathComponent(seed.target).appendingPathComponent(seed.file))
        return seed.target == "token" ? FuzzEntry.tokenResponse(data) : FuzzEntry.parseSummary(data, exhaustive: true)
    }

    @Test("each token seed has the outcome its name says", arguments: FuzzSeedTests.seeds("token"))
    func tokenSeed(_ seed: Seed) throws {
        let outcome = try Self.outcome(seed)
        if let expect = seed.expect { #expect(outcome.expect == expect, "\(outcome.stage): \(outcome.message)") }
    }

    @Test("each summary seed has the outcome its name says", arguments: FuzzSeedTests.seeds("summary"))
    func summarySeed(_ seed: Seed) throws {
        let outcome = try Self.outcome(seed)
        if let expect = seed.expect { #expect(outcome.expect == expect, "\(outcome.stage): \(outcome.message)") }
    }

    /// The agent's request reader and the etcd gateway's answers: each seed
    /// has the outcome its name says (a finding of either traps).
    @Test("each agent seed has the outcome its name says", arguments: FuzzSeedTests.seeds("agent"))
    func agentSeed(_ seed: Seed) throws {
        let data = try Data(contentsOf: Self.folder.appendingPathComponent(seed.target).appendingPathComponent(seed.file))
        let outcome = FuzzEntry.agentRequest(data)
        if let expect = seed.expect { #expect(outcome.expect == expect, "\(outcome.stage): \(outcome.message)") }
    }

    @Test("each etcd seed has the outcome its name says", arguments: FuzzSeedTests.seeds("etcd"))
    func etcdSeed(_ seed: Seed) async throws {
        let data = try Data(contentsOf: Self.folder.appendingPathComponent(seed.target).appendingPathComponent(seed.file))
        let outcome = await FuzzEntry.etcdAnswers(data)
        if let expect = seed.expect { #expect(outcome.expect == expect, "\(outcome.stage): \(outcome.message)") }
    }

    /// The masker's target traps on a finding, so coming back is the pass.
    @Test("each mask seed replays without a finding", arguments: FuzzSeedTests.seeds("mask"))
    func maskSeed(_ seed: Seed) throws {
        let data = try Data(contentsOf: Self.folder.appendingPathComponent(seed.target).appendingPathComponent(seed.file))
        #expect(FuzzEntry.mask(data).expect == "success")
    }

    /// Every name says an outcome the targets can give; the issue's cases are there.
    @Test func seedsAreNamedAndPresent() {
        for seed in Self.seeds("token") + Self.seeds("summary") {
            #expect(["success", "refused", "corrupt", nil].contains(seed.expect), "\(seed.testDescription)")
        }
        let token = Set(Self.seeds("token").map(\.file))
        for file in ["refused-expires-in-int64-max.json", "refused-expires-in-1e17.json", "refused-expires-in-minus-1.json",
                     "refused-expires-in-zero.json", "success-expires-in-string-3600.json", "refused-jwt-exp-huge.json",
                     "refused-jwt-exp-negative.json", "success-jwt-exp-float.json", "refused-missing-access-token.json",
                     "success-extra-fields-nested-junk.json"] {
            #expect(token.contains(file), "token/\(file)")
        }
        let summary = Set(Self.seeds("summary").map(\.file))
        for file in ["corrupt-secret-set-at-minus-1e300.json", "corrupt-application-expiry-plus-1e19.json",
                     "corrupt-application-expiry-minus-1e19.json", "corrupt-secret-set-at-nan-string.json",
                     "corrupt-user-token-count-huge.json", "success-unknown-keys.json", "corrupt-deep-nesting.json"] {
            #expect(summary.contains(file), "summary/\(file)")
        }
    }

    /// A summary the reader accepts with a renewal failure whose reason holds
    /// an escape sequence would reach the terminal through a keyless `check`.
    @Test func renewalFailureReasonWithControlCharactersIsCorrupt() {
        let json = #"{"profiles":{"default":{"secretSetAt":1767225600,"userTokenCount":0,"lastRenewalFailure":{"at":1795900000,"reason":"\u001b]0;x\u0007"}}}}"#
        let outcome = FuzzEntry.parseSummary(Data(json.utf8))
        #expect(outcome.expect == "corrupt" && outcome.stage == "parse")
        let clean = #"{"profiles":{"default":{"secretSetAt":1767225600,"userTokenCount":0,"lastRenewalFailure":{"at":1795900000,"reason":"Tallyfy answered 503"}}}}"#
        #expect(FuzzEntry.parseSummary(Data(clean.utf8)).expect == "success")
    }
}

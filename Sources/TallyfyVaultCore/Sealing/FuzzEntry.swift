#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The parser and the key-file unlock path over untrusted bytes, and the
/// clear summary with what reads it (the token answer's target is in
/// `TallyfyVault`), for the libFuzzer harness (`Sources/tallyfy-vault-fuzz`,
/// `tools/fuzz`), its replay mode and `FuzzSeedTests`. It never reads a file, never runs Argon2id (only a key-file
/// secret is given, and a passphrase slot is tried only with a passphrase)
/// and never throws: an error is the expected answer to a hostile file; only
/// a crash, a trap or a sanitizer report is a finding.
package enum FuzzEntry {
    /// How far the bytes got, and why they stopped.
    package struct Outcome: Sendable, Equatable {
        /// `success`, or the failed `VaultError.Kind` as the test vectors name
        /// it (`corrupt`, `refused`, …).
        package var expect: String
        /// `parse`, `open` or `records`: the stage that failed (the last one
        /// reached on success), as in the vectors' `stage`.
        package var stage: String
        /// The error message, empty on success.
        package var message: String

        package init(expect: String, stage: String, message: String) {
            self.expect = expect
            self.stage = stage
            self.message = message
        }
    }

    /// The moment the targets below take as "now" (2026-11-29T00:00:00Z),
    /// fixed so that an input replays exactly as it ran.
    package static let fixedNow = Date(timeIntervalSince1970: 1_795_910_400)

    /// The clocks the consumers of a parsed summary run with besides
    /// `fixedNow`: the edges of the dates a vault holds, and the clocks a
    /// debug build's `TALLYFY_VAULT_TEST_NOW` can set, however absurd.
    static let otherClocks: [Date] = ([
        0, VaultBounds.latestDate, -62_135_596_800, 1e300, -1e300, .greatestFiniteMagnitude, .infinity, .nan,
    ] as [TimeInterval]).map { Date(timeIntervalSince1970: $0) }

    /// Called with the stage about to run (`parse`, `open`, `records`), so a
    /// replay can show where a crash happened. Not used while fuzzing.
    nonisolated(unsafe) package static var stageHook: ((String) -> Void)? = nil

    /// `ParsedVault(parsing:)`, then `UnlockedVault.open` with the 32-byte
    /// key file `keyFile`, then `userTokens(profile:)` for every profile of
    /// the content and of the clear summary.
    @discardableResult
    package static func parseAndOpen(_ data: Data, keyFile: [UInt8]) -> Outcome {
        var stage = "parse"
        do {
            stageHook?(stage)
            let parsed = try ParsedVault(parsing: data)
            stage = "open"
            stageHook?(stage)
            let secret = UnlockSecret(kind: .keyFile, bytes: SecretBytes(copying: keyFile), origin: "fuzz key file")
            let vault = try UnlockedVault.open(parsed, with: [secret])
            stage = "records"
            stageHook?(stage)
            for profile in Set(vault.content.profiles.keys).union(parsed.summary.profiles.keys).sorted() {
                _ = try vault.userTokens(profile: profile)
            }
            return Outcome(expect: "success", stage: stage, message: "")
        } catch let error as VaultError {
            return Outcome(expect: "\(error.kind)", stage: stage, message: error.message)
        } catch {
            return Outcome(expect: "error", stage: stage, message: "\(error)")
        }
    }

    // MARK: - The clear summary

    /// A version-1 vault whose clear summary is `summary`, byte for byte:
    /// one key-file slot, no records, an empty sealed root. Everything but
    /// the summary is well formed, so `ParsedVault(parsing:)` gets as far as
    /// the summary's decoding and checks.
    static func vault(aroundSummary summary: Data) -> Data {
        var body = ByteWriter()
        body.u8(1)
        KeySlot(kind: .keyFile, label: "fuzz", salt: [UInt8](repeating: 0, count: KeySlot.saltLength), parameters: [],
            nonce: [UInt8](repeating: 0, count: Sodium.aeadNonceBytes),
            wrappedKey: [UInt8](repeating: 0, count: KeySlot.wrappedKeyLength)).write(to: &body)
        body.u32(UInt32(clamping: summary.count))
        body.raw(summary)
        var file = ByteWriter()
        file.raw(VaultFormat.magic)
        file.u16(VaultFormat.version)
        file.u32(UInt32(clamping: VaultFormat.magic.count + 2 + 4 + body.bytes.count))
        file.raw(body.bytes)
        file.u32(0)  // no records
        file.raw([UInt8](repeating: 0, count: Sodium.aeadNonceBytes))
        file.u32(UInt32(Sodium.aeadTagBytes))
        file.raw([UInt8](repeating: 0, count: Sodium.aeadTagBytes))
        return Data(file.bytes)
    }

    /// The clear summary as a keyless `status` and `check` read it: `data`
    /// is the summary JSON, placed in a vault header and parsed by
    /// `ParsedVault(parsing:)` (decoding, profile names, bounds); then
    /// everything those commands run on it: `HealthCheck.evaluate` (all
    /// profiles, and named ones), each `check` format, `status`'s report as
    /// JSON and text, and the dates and durations they print. A refused
    /// summary is the expected answer; a crash or trap is a finding, and so
    /// is a summary that passes while breaking a bound the reader promises
    /// (checked here with `precondition`).
    @discardableResult
    package static func parseSummary(_ data: Data, exhaustive: Bool = false) -> Outcome {
        var stage = "parse"
        do {
            stageHook?(stage)
            let parsed = try ParsedVault(parsing: vault(aroundSummary: data))
            let summary = parsed.summary
            for (name, profile) in summary.profiles {
                precondition((try? Credentials.checkProfileName(name)) != nil, "a summary with a bad profile name was accepted")
                precondition(profile.isReadable, "a summary with a date, count or reason out of bounds was accepted")
            }
            let clocks = [fixedNow] + otherClocks
            let names = summary.profiles.keys.sorted()
            let lists: [[String]?] = [nil, [names.first ?? "default"], names + ["missing"]]
            let thresholds = [
                HealthCheck.Thresholds(),
                HealthCheck.Thresholds(warnBefore: 0, criticalBefore: 0, secretMaxAge: 0),
                HealthCheck.Thresholds(warnBefore: 3650 * 86400, criticalBefore: 3650 * 86400, secretMaxAge: 3650 * 86400),
            ]
            // One clock, profile list and set of thresholds per input, chosen
            // by its length (so a replay makes the same choice); every one of
            // them when `exhaustive`, as the test suite replays the seeds.
            for choice in exhaustive ? Array(0..<clocks.count * lists.count * thresholds.count) : [data.count] {
                let now = clocks[choice % clocks.count]
                stage = "check"
                stageHook?(stage)
                let report = HealthCheck.evaluate(
                    summary, profiles: lists[choice / clocks.count % lists.count],
                    thresholds: thresholds[choice / clocks.count / lists.count % thresholds.count], now: now)
                for format in CheckFormat.allCases {
                    // `check` prints what this returns; a throw would end it
                    // outside the exit statuses 0..3 it promises.
                    guard let text = try? format.render(report) else { preconditionFailure("check --format \(format) failed") }
                    _ = text
                }
                stage = "status"
                stageHook?(stage)
                let status = VaultStatus.make(summary: summary, slots: parsed.slots.map(SlotInfo.init), vault: "fuzz.vault", now: now)
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                guard (try? encoder.encode(status)) != nil else { preconditionFailure("status --format json failed") }
                var text = ""
                for profile in status.profiles {
                    text += "\(profile.name) application \(profile.applicationTokenExpiresAt ?? "-") \(profile.applicationTokenLeft ?? "none sealed")\n"
                    text += "\(profile.name) users (\(profile.userTokenCount)) \(profile.earliestUserTokenExpiresAt ?? "-") \(profile.earliestUserTokenLeft ?? "-")\n"
                    text += "\(profile.name) client secret set \(profile.secretSetAt) \(profile.secretAge) old\n"
                }
                _ = text
            }
            return Outcome(expect: "success", stage: stage, message: "")
        } catch let error as VaultError {
            return Outcome(expect: "\(error.kind)", stage: stage, message: error.message)
        } catch {
            return Outcome(expect: "error", stage: stage, message: "\(error)")
        }
    }
}

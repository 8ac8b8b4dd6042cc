import ArgumentParser
import CSodium
import Foundation
import TallyfyVault

/// Builds large vaults through the library, for benchmarks and scale tests:
/// ten thousand user tokens without ten thousand HTTP calls. Not installed
/// for users; `tools/bench` and the tests run it.
@main
struct FixtureCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tallyfy-vault-fixture",
        abstract: "Fill a vault with fake user tokens (benchmarks and tests only).",
        subcommands: [AddUsers.self, PlaintextSize.self, SecretDigest.self, MaskThroughput.self])

    struct Target: ParsableArguments {
        @Option var vault: String
        @Option var keyFile: String
        @Option var profile = "default"

        func secrets() throws -> [UnlockSecret] { [try UnlockSources.readKeyFile(keyFile)] }
    }

    struct AddUsers: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Seal COUNT fake user tokens user0@example.com … in one write; --replace re-seals user0 only.")
        @OptionGroup var target: Target
        @Option var count: Int
        @Flag(help: "Seal one new token for user0@example.com (a single-record write).") var replace = false

        func run() async throws {
            let profile = target.profile
            let total = replace ? 1 : count
            try await VaultStore(location: target.vault).update(with: try target.secrets()) { vault in
                let now = Date()
                try vault.setUserTokens((0..<total).map { index in
                    UserTokenRecord(
                        profile: profile, email: "user\(index)@example.com",
                        token: SealedToken(value: Self.fakeToken(), expiresAt: now.addingTimeInterval(7_776_000), obtainedAt: now))
                })
            }
        }

        /// A random token of the size the emulator's JWTs have (~400 bytes).
        static func fakeToken() -> String {
            let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
            return String((0..<400).map { _ in alphabet.randomElement()! })
        }
    }

    struct PlaintextSize: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the plaintext JSON size of everything sealed.")
        @OptionGroup var target: Target

        func run() async throws {
            let vault = try await VaultStore(location: target.vault).open(with: try target.secrets())
            let encoder = JSONEncoder()
            var bytes = try encoder.encode(vault.content).count
            for profile in vault.content.profiles.keys {
                for record in try vault.userTokens(profile: profile) { bytes += try encoder.encode(record).count }
            }
            print("plaintext JSON bytes: \(bytes)")
        }
    }

    /// Which client secret a vault holds, without showing it: tools/partition-test
    /// reads the vault (from the cluster, for an etcd location) after faults and
    /// compares this with the digests of the secrets it rotated to.
    struct SecretDigest: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the BLAKE2b-128 digest (hex) of the profile's client secret, never the secret.")
        @OptionGroup var target: Target

        func run() async throws {
            let vault = try await VaultStore(location: target.vault).open(with: try target.secrets())
            guard let profile = vault.content.profiles[target.profile] else {
                throw ValidationError("no profile \(target.profile) in the vault")
            }
            let input = Array(profile.clientSecret.utf8)
            var digest = [UInt8](repeating: 0, count: 16)
            crypto_generichash(&digest, digest.count, input, UInt64(input.count), nil, 0)
            print(digest.map { String(format: "%02x", $0) }.joined())
        }
    }

    /// `tools/bench mask`: the masker alone over a file, with 1 or more
    /// random JWT-sized tokens (each in all its forms), so the cost of more
    /// tokens is seen apart from the relay's copies.
    struct MaskThroughput: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Mask FILE in 64 KiB chunks with N random tokens; print MB/s (best of 3) and the forms in the automaton.")
        @Option(help: "How many tokens.") var tokens = 1
        @Argument var file: String

        func run() throws {
            let data = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
            let secrets = (0..<tokens).map { _ in Array(("eyJ" + AddUsers.fakeToken()).utf8) }
            var best = Double.infinity
            var forms = 0
            for _ in 0..<3 {
                var masker = OutputMasker(secrets: secrets)
                forms = masker.patterns.count
                var out = 0
                let start = DispatchTime.now().uptimeNanoseconds
                data.withUnsafeBufferPointer { all in
                    var offset = 0
                    while offset < all.count {
                        let end = min(all.count, offset + 65536)
                        out += masker.feed(UnsafeBufferPointer(rebasing: all[offset..<end])).count
                        offset = end
                    }
                }
                out += masker.finish().count
                precondition(out == data.count, "the masker changed text with no token in it")
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
            print(String(format: "tokens %d, forms %d: %.0f MB/s (%.1f ms for %d bytes)", tokens, forms, Double(data.count) / best / 1e6, best * 1000, data.count))
        }
    }
}

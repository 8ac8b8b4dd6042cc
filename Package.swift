// swift-tools-version:6.0
import PackageDescription

// Test hooks (a cheap Argon2id cost, a settable clock) exist only in debug
// builds, which are what the test suite runs; release builds cannot be
// weakened through the environment.
let testHooks: [SwiftSetting] = [.define("TALLYFY_TEST_HOOKS", .when(configuration: .debug))]

let package = Package(
    name: "tallyfy-vault",
    products: [
        .library(name: "TallyfyVault", targets: ["TallyfyVault"]),
        .library(name: "TallyfyVaultCore", targets: ["TallyfyVaultCore"]),
        .executable(name: "tallyfy-vault", targets: ["tallyfy-vault"]),
        .executable(name: "tallyfy-vault-cli", targets: ["tallyfy-vault-cli"]),
        .executable(name: "tallyfy-emulator", targets: ["tallyfy-emulator"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        // Already under async-http-client; named so TLS errors are matched by type.
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        // `swift package generate-documentation --target TallyfyVault` (tools/test builds
        // the DocC catalog, warnings as errors); a plugin, linked into nothing.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"]), .brew(["libsodium"])]
        ),
        // The PKCS#11 header (p11-kit's, permissively licensed) and a few C
        // steps over a module loaded with dlopen at run time: no module is
        // linked, so a machine without one runs every other slot kind.
        .target(name: "CPKCS11"),
        // Everything but the HTTP stack: sealing, store, unlock, policy and
        // launch. The `tallyfy-vault` launcher links only this, so the exec
        // fast path starts small (see README "Speed").
        .target(
            name: "TallyfyVaultCore",
            dependencies: ["CSodium", "CPKCS11"],
            swiftSettings: testHooks
        ),
        // The core plus the Tallyfy client that renews tokens.
        .target(
            name: "TallyfyVault",
            dependencies: [
                "TallyfyVaultCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                // TLS errors matched by type; etcds:// trusts a given CA and presents a client certificate.
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: testHooks
        ),
        // The `tallyfy-vault` command: a small launcher that serves a plain
        // `exec` with a fresh token itself and hands everything else to
        // `tallyfy-vault-cli`, installed beside it.
        //
        // Released as one static executable (glibc and libsodium built in):
        // no dynamic loader, no shared library mapped or relocated at each
        // start, which was half of what a fresh `exec` cost over starting
        // the child (docs/speed.md). The price: a security update of glibc or
        // libsodium reaches it when `tools/install` runs again (SECURITY.md).
        .executableTarget(
            name: "tallyfy-vault",
            dependencies: ["TallyfyVaultCore"],
            swiftSettings: testHooks,
            linkerSettings: [.unsafeFlags(["-static-executable"], .when(platforms: [.linux], configuration: .release))]
        ),
        // Every command, thin over the library; started by `tallyfy-vault`.
        .executableTarget(
            name: "tallyfy-vault-cli",
            dependencies: [
                "TallyfyVault",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: testHooks
        ),
        .executableTarget(
            name: "tallyfy-emulator",
            dependencies: [
                "CSodium",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
        // Builds large vaults through the library for benchmarks and scale
        // tests; not a user-facing product.
        .executableTarget(
            name: "tallyfy-vault-fixture",
            dependencies: [
                "TallyfyVault",
                "CSodium",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The library example shown in README.md; a test checks README.md
        // quotes it verbatim, builds it and runs it against the emulator.
        .executableTarget(
            name: "tallyfy-vault-example",
            dependencies: ["TallyfyVault"]
        ),
        // libFuzzer harness over the vault parser and unlock path, the token
        // answer and the clear summary; built with -sanitize=fuzzer by
        // tools/fuzz, a replay tool in a normal build.
        .executableTarget(
            name: "tallyfy-vault-fuzz",
            dependencies: ["TallyfyVault"]
        ),
        .testTarget(
            name: "TallyfyVaultTests",
            dependencies: ["TallyfyVault", "TallyfyVaultCore", "CSodium", "CPKCS11"],
            resources: [.copy("Vectors"), .copy("FuzzSeeds")],
            swiftSettings: testHooks
        ),
        .testTarget(
            name: "CLITests",
            dependencies: [
                "TallyfyVault",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: testHooks
        ),
    ]
)

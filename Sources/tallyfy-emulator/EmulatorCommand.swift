import ArgumentParser
import CSodium
import Foundation
import Hummingbird

/// `tallyfy-emulator`: a local stand-in for the Tallyfy endpoints the vault
/// uses, for tests, demos and users' own integration tests.
///
/// It only ever listens on loopback: it has no TLS and an unauthenticated
/// admin surface, so it must not be reachable from other machines.
@main
struct EmulatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tallyfy-emulator",
        abstract: "Serve the Tallyfy OAuth and user-provisioning endpoints on a loopback port.",
        discussion: """
            Prints one line, `listening on http://HOST:PORT`, once it accepts connections. \
            Stops on SIGINT or SIGTERM. Admin endpoints (request counts, fault injection, \
            secret replacement) live under /__emulator/.
            """
    )

    @Option(help: "Loopback address to listen on (127.0.0.0/8, ::1 or localhost).")
    var host: String = "127.0.0.1"

    @Option(help: "Port to listen on; 0 picks a free port.")
    var port: Int = 0

    @Option(name: .customLong("org"), help: ArgumentHelp("An organization ID to serve (repeatable; default \(Self.defaultOrg), 32 hexadecimal characters like a real one).", valueName: "ORG_ID"))
    var orgs: [String] = []

    @Option(name: .customLong("client"), help: ArgumentHelp(
        "An accepted client (repeatable; one ID twice = both secrets accepted). Visible in ps: prefer --clients-file.",
        valueName: "ID:SECRET"))
    var clients: [String] = []

    @Option(help: ArgumentHelp("A file with one ID:SECRET per line (blank lines and lines starting with # are skipped).", valueName: "PATH"))
    var clientsFile: String?

    @Option(name: .customLong("client-org"), help: ArgumentHelp(
        "Put a client in an organization other than the first --org (repeatable).", valueName: "ID:ORG_ID"))
    var clientOrgs: [String] = []

    @Option(help: ArgumentHelp("Lifetime of application tokens.", valueName: "SECONDS"))
    var appTokenTTL: Int = 604_800

    @Option(help: ArgumentHelp("Lifetime of user tokens.", valueName: "SECONDS"))
    var userTokenTTL: Int = 7_776_000

    @Flag(help: "Issuing a token revokes the earlier ones of the same client (application tokens) or user (user tokens), to test programs against a service that keeps one token per client.")
    var revokeOnReissue = false

    @Option(help: ArgumentHelp("Log level on standard error: trace, debug, info, notice, warning (default), error, critical.", valueName: "LEVEL"))
    var logLevel: String?

    func validate() throws {
        guard LoopbackHost.isLoopback(host) else {
            throw ValidationError("refusing to listen on \(host): only loopback addresses (127.0.0.0/8, ::1, localhost) are allowed")
        }
        guard (0...65535).contains(port) else {
            throw ValidationError("--port must be between 0 and 65535")
        }
        guard appTokenTTL > 0, userTokenTTL > 0 else {
            throw ValidationError("token lifetimes must be at least 1 second")
        }
        if let logLevel, !Self.logLevels.contains(logLevel) {
            throw ValidationError("unknown --log-level \(logLevel)")
        }
        for org in orgs where org.isEmpty || org.contains("/") {
            throw ValidationError("invalid --org \"\(org)\"")
        }
    }

    /// Shaped like a real Tallyfy organization ID (32 hexadecimal characters).
    static let defaultOrg = "3f2a9c1e7b5d4a60b8e1c2d3f4a5b6c7"

    private static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    func run() async throws {
        guard sodium_init() >= 0 else {
            throw ExitCode(70)  // EX_SOFTWARE: libsodium could not initialise
        }
        let orgs = self.orgs.isEmpty ? [Self.defaultOrg] : self.orgs
        let clients = try loadClients(orgs: orgs)
        if clients.isEmpty {
            FileHandle.standardError.write(Data("tallyfy-emulator: warning: no --client or --clients-file given; every token request will fail with invalid_client\n".utf8))
        }

        let state = EmulatorState(
            orgs: orgs, clients: clients, lifetimes: TokenLifetimes(app: appTokenTTL, user: userTokenTTL))
        let settings = EmulatorSettings(signer: JWTSigner(), revokeOnReissue: revokeOnReissue)
        let router = Router()
        EmulatorRoutes(state: state, settings: settings).register(on: router)

        let bindHost = LoopbackHost.bindAddress(for: host)
        let shownHost = LoopbackHost.urlHost(for: host)
        var app = Application(
            router: router,
            configuration: .init(address: .hostname(bindHost, port: port), serverName: "tallyfy-emulator"),
            onServerRunning: { channel in
                // The only line ever written to stdout: scripts read the port from it.
                let boundPort = channel.localAddress?.port ?? 0
                // FileHandle writes are unbuffered: the line is out as soon as this returns.
                FileHandle.standardOutput.write(Data("listening on http://\(shownHost):\(boundPort)\n".utf8))
            }
        )
        // --log-level, else LOG_LEVEL (already read by Hummingbird), else warning:
        // quiet by default, since tests read this process's output.
        if let logLevel {
            app.logger.logLevel = .init(rawValue: logLevel) ?? .warning
        } else if ProcessInfo.processInfo.environment["LOG_LEVEL"] == nil {
            app.logger.logLevel = .warning
        }
        // Handles SIGTERM and SIGINT with a graceful shutdown, then returns.
        try await app.runService()
    }

    /// `--client` entries and the `--clients-file` lines, each `ID:SECRET`
    /// split at the first colon (secrets may contain colons).
    private func loadClients(orgs: [String]) throws -> [Client] {
        var entries: [(entry: String, source: String)] = clients.map { ($0, "--client") }
        if let clientsFile {
            let text: String
            do {
                text = try String(contentsOfFile: clientsFile, encoding: .utf8)
            } catch {
                throw ValidationError("cannot read --clients-file \(clientsFile): \(error.localizedDescription)")
            }
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let trimmed = line.trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
                if trimmed.trimmingCharacters(in: .whitespaces).isEmpty || trimmed.hasPrefix("#") { continue }
                entries.append((trimmed, "\(clientsFile) line \(number + 1)"))
            }
        }

        var orgOfClient: [String: String] = [:]
        for entry in clientOrgs {
            guard let colon = entry.firstIndex(of: ":") else {
                throw ValidationError("--client-org must be ID:ORG_ID")
            }
            let org = String(entry[entry.index(after: colon)...])
            guard orgs.contains(org) else {
                throw ValidationError("--client-org names \(org), which is not an --org of this emulator")
            }
            orgOfClient[String(entry[..<colon])] = org
        }

        return try entries.map { entry, source in
            // The message names where the bad entry is, never its content (it holds a secret).
            guard let colon = entry.firstIndex(of: ":"), colon != entry.startIndex,
                  entry.index(after: colon) != entry.endIndex
            else {
                throw ValidationError("\(source): a client must be written ID:SECRET")
            }
            let id = String(entry[..<colon])
            return Client(id: id, org: orgOfClient[id] ?? orgs[0], secrets: [String(entry[entry.index(after: colon)...])])
        }
    }
}

/// Which `--host` values count as loopback, and how they are bound and shown.
enum LoopbackHost {
    static func isLoopback(_ host: String) -> Bool {
        let bare = unbracketed(host)
        if bare.lowercased() == "localhost" { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, bare, &v4) == 1 {
            // s_addr is in network byte order: the first octet is the lowest byte in memory.
            return withUnsafeBytes(of: &v4) { $0[0] } == 127
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, bare, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { bytes in
                bytes.prefix(15).allSatisfy { $0 == 0 } && bytes[15] == 1
            }
        }
        return false
    }

    /// `localhost` is bound as 127.0.0.1, so the emulator never ends up on
    /// whatever else a resolver might map the name to.
    static func bindAddress(for host: String) -> String {
        let bare = unbracketed(host)
        return bare.lowercased() == "localhost" ? "127.0.0.1" : bare
    }

    /// The host as written in a URL: IPv6 addresses in brackets.
    static func urlHost(for host: String) -> String {
        let bare = unbracketed(host)
        return bare.contains(":") ? "[\(bare)]" : bare
    }

    private static func unbracketed(_ host: String) -> String {
        host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    }
}

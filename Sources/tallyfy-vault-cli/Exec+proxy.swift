import ArgumentParser
import Foundation
import TallyfyVault

/// `exec --proxy [--allow METHOD:PATH-GLOB]… [--verbose]`: the command gets the
/// address of a loopback proxy and a capability, never the token (docs/proxy.md,
/// "The child never holds the token").
struct ProxyArguments: ParsableArguments {
    @Flag(help: ArgumentHelp("""
        Run the command as a child that never holds the token: it gets a loopback proxy's address in \
        TALLYFY_API_URL (and TALLYFY_BASE_URL, TALLYFY_API_BASE_URL) and a capability for this run in \
        TALLYFY_TOKEN and TALLYFY_API_TOKEN; the proxy adds the real token to each request.
        """))
    var proxy = false

    @Option(name: .customLong("allow"), help: ArgumentHelp("""
        With --proxy (repeatable): forward only these requests, e.g. GET:/organizations/*/processes/** \
        (a path below the API URL; * within one segment, ** any number of segments; METHOD may be *). \
        Default: everything below the API URL.
        """, valueName: "METHOD:PATH-GLOB"))
    var allow: [String] = []

    @Flag(help: "With --proxy, print the proxy's counts (requests, refusals, renewals) on standard error when the command ends.")
    var verbose = false

    /// The rules, or `nil` without `--proxy`.
    func rules() throws -> [ProxyAllowRule]? {
        guard proxy else {
            if !allow.isEmpty || verbose { throw ValidationError("--allow and --verbose apply only with --proxy") }
            return nil
        }
        return try allow.map(ProxyAllowRule.init(parsing:))
    }
}

extension Exec {
    /// `exec --proxy`: start the proxy, run the command as a child with its
    /// address and capability, close the port when the command ends, and
    /// exit with its status.
    static func runProxied(
        _ arguments: [String], context: CommandContext, selection: TokenSelection, rules: [ProxyAllowRule], verbose: Bool, mask: Bool
    ) async throws -> Never {
        try ChildEnvironment.refuseNesting(context.environment)
        ProcessHardening.protect()  // the proxy holds the token while the command runs
        let running = try await ProxyLaunch.start(context: context, selection: selection, rules: rules, what: "exec --proxy")
        let environment = ChildEnvironment.buildProxied(
            parent: context.environment, grant: running.grant, url: running.proxy.url, capability: running.proxy.capability.value)
        let outcome = Result { try Supervisor.runProxied(arguments, environment: environment, capability: running.proxy.capability.value, mask: mask) }
        await running.proxy.stop()
        if verbose { Output.note("proxy: \(running.proxy.counters.snapshot.line)") }
        let status = try outcome.get()
        fflush(nil)
        Glibc.exit(status)
    }
}

/// Starting a proxy, shared by `exec --proxy` and `proxy`: the first grant
/// through `TokenSelection` (the one hand-out path), then the server and
/// its background renewal.
enum ProxyLaunch {
    struct Running {
        let proxy: CredentialProxy
        let grant: TokenGrant
        let serving: Task<Void, Never>
    }

    /// `unixSocketPath`: the standing proxy's socket, for this uid only.
    static func start(
        context: CommandContext, selection: TokenSelection, rules: [ProxyAllowRule], what: String, unixSocketPath: String? = nil
    ) async throws -> Running {
        let (request, source) = try await selection.renewingSource(context, what: what)
        let grant = try await selection.firstGrant(request, from: source)
        let apiURL = try EndpointURL.validate(grant.apiURL, name: "API URL")
        let counters = ProxyCounters(unixSocket: unixSocketPath != nil)
        let keeper = ProxyTokenKeeper(first: grant, request: request, source: source, counters: counters, environment: context.environment)
        var configuration = CredentialProxy.Configuration(apiURL: apiURL, tokenURL: nil, rules: rules, environment: context.environment)
        configuration.unixSocketPath = unixSocketPath
        configuration.refusedPeer = { uid, pid in
            Output.note("refused a connection to the proxy's Unix socket from uid \(uid) (pid \(pid)): it serves only uid \(geteuid())")
        }
        let proxy = try await CredentialProxy.start(configuration: configuration, keeper: keeper, counters: counters)
        await keeper.startRenewing(note: { Output.note($0) })
        let serving = Task { await proxy.serve() }
        return Running(proxy: proxy, grant: grant, serving: serving)
    }
}

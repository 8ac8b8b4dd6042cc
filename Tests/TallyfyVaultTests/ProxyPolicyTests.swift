import Foundation
import NIOHTTP1
import Testing

@testable import TallyfyVault

/// What the credential proxy forwards and what it answers itself: request
/// targets, `--allow` rules, and the child's headers. The end-to-end tests
/// (CLITests/ProxyTests) prove the same refusals never reach the emulator.
@Suite struct ProxyPolicyTests {
    let policy = ProxyPolicy(apiURL: URL(string: "https://go.tallyfy.com/api")!, tokenURL: URL(string: "https://go.tallyfy.com/oauth/token")!, rules: [])

    private func refusal(_ target: String, method: String = "GET", _ policy: ProxyPolicy? = nil) -> ProxyRefusal? {
        if case .failure(let refusal) = (policy ?? self.policy).check(method: method, target: target) { return refusal }
        return nil
    }

    @Test func pathsBelowTheAPIURLAreForwardedAsWritten() throws {
        for target in ["/api/organizations/abc/me", "/api/me", "/api/organizations/abc/users?page=2&per_page=5", "/api/me/",
            "/api/organizations/a%20b/me"]
        {
            #expect(try policy.check(method: "GET", target: target).get() == target)
        }
    }

    @Test(arguments: [
        "/oauth/token", "/api/../oauth/token", "/api/%2e%2e/oauth/token", "/api/%2E%2e/x", "/api/./me", "/api/a%2fb",
        "/api//me", "/__emulator/counts", "/api", "/", "/apix/me", "/API/me", "/api/oauth/token", "/api/x/%5c..",
    ])
    func everythingElseIsForbidden(target: String) {
        #expect(refusal(target)?.status == 403, "\(target)")
    }

    @Test(arguments: ["http://127.0.0.1:1/api/me", "127.0.0.1:443", "*", "/api/me#x", "/api/m e", "/api/%zz", "/api/é"])
    func notAnOriginFormPathIsABadRequest(target: String) {
        #expect(refusal(target)?.status == 400, "\(target)")
    }

    @Test func connectAndTraceAreRefused() {
        #expect(refusal("/api/me", method: "CONNECT")?.status == 405)
        #expect(refusal("/api/me", method: "TRACE")?.status == 405)
    }

    @Test func allowRulesMatchMethodAndSegments() throws {
        let rules = try ["GET:/organizations/*/processes/**", "post:/organizations/*/runs", "*:/me"].map(ProxyAllowRule.init(parsing:))
        let allowing = ProxyPolicy(apiURL: URL(string: "http://127.0.0.1:9/api")!, tokenURL: nil, rules: rules)
        for (method, target) in [("GET", "/api/organizations/o1/processes"), ("GET", "/api/organizations/o1/processes/p/tasks?x=1"),
            ("POST", "/api/organizations/o1/runs"), ("DELETE", "/api/me")]
        {
            #expect(refusal(target, method: method, allowing) == nil, "\(method) \(target)")
        }
        for (method, target) in [("POST", "/api/organizations/o1/processes"), ("GET", "/api/organizations/o1/runs"),
            ("GET", "/api/organizations/o1/o2/processes"), ("GET", "/api/organizations/o1/users"), ("GET", "/api/me/x")]
        {
            #expect(refusal(target, method: method, allowing)?.status == 403, "\(method) \(target)")
        }
        #expect(try ProxyAllowRule(parsing: "GET:/organizations/abc*/me").allows(method: "GET", path: ["organizations", "abcdef", "me"]))
        #expect(try !ProxyAllowRule(parsing: "GET:/organizations/abc*/me").allows(method: "GET", path: ["organizations", "xabc", "me"]))
    }

    @Test(arguments: ["GET/organizations", ":/x", "G3T:/x", "GET:organizations", "GET:/a/../b", "GET:/a?b", "GET:/a b"])
    func aMalformedRuleIsAUsageError(text: String) {
        #expect(throws: VaultError.self) { try ProxyAllowRule(parsing: text) }
    }

    // MARK: Headers

    let capability = ProxyCapability()
    let own: Set<String> = ["127.0.0.1:4000", "localhost:4000"]

    private func headers(_ pairs: [(String, String)]) -> HTTPHeaders { HTTPHeaders(pairs) }

    @Test func theCapabilityIsReplacedAndSmugglingHeadersDropped() throws {
        let sent = headers([
            ("Host", "127.0.0.1:4000"), ("Authorization", "Bearer \(capability.value)"), ("Proxy-Authorization", "Basic x"),
            ("Connection", "keep-alive, X-Secret-Hop"), ("X-Secret-Hop", "1"), ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", "host=evil"), ("Transfer-Encoding", "chunked"), ("Accept", "application/json"),
        ])
        let out = try ProxyHeaders.upstream(sent, capability: capability, ownHosts: own, requireHost: true).get()
        #expect(out.map(\.name).sorted() == ["Accept", "X-Tallyfy-Client"])
        #expect(out["X-Tallyfy-Client"] == ["APIClient"])
        let sdk = try ProxyHeaders.upstream(headers([("Host", "localhost:4000"), ("Authorization", "bearer \(capability.value)"),
            ("X-Tallyfy-Client", "TallyfySDK")]), capability: capability, ownHosts: own, requireHost: true).get()
        #expect(sdk["X-Tallyfy-Client"] == ["TallyfySDK"])
    }

    @Test func aMissingWrongOrDoubledCapabilityIsRefused() {
        func status(_ pairs: [(String, String)]) -> Int? {
            if case .failure(let refusal) = ProxyHeaders.upstream(headers(pairs), capability: capability, ownHosts: own, requireHost: true) {
                return refusal.status
            }
            return nil
        }
        let host = ("Host", "127.0.0.1:4000")
        #expect(status([host]) == 401)
        #expect(status([host, ("Authorization", "Bearer \(ProxyCapability().value)")]) == 401)
        #expect(status([host, ("Authorization", "Bearer \(capability.value)x")]) == 401)
        #expect(status([host, ("Authorization", "Basic \(capability.value)")]) == 401)
        #expect(status([host, ("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x")]) == 401)
        #expect(status([host, ("Authorization", "Bearer \(capability.value)"), ("Authorization", "Bearer \(capability.value)")]) == 400)
        #expect(status([("Host", "go.tallyfy.com"), ("Authorization", "Bearer \(capability.value)")]) == 400)
        #expect(status([host, host, ("Authorization", "Bearer \(capability.value)")]) == 400)
        #expect(status([("Authorization", "Bearer \(capability.value)")]) == 400)
        #expect(status([host, ("Authorization", "Bearer \(capability.value)")]) == nil)
    }

    /// Over the standing proxy's Unix socket (peer uid checked by the kernel):
    /// no capability needed, but one given must be right; any one `Host`.
    @Test func overTheUnixSocketTheCapabilityIsOptionalButNeverWrong() {
        func status(_ pairs: [(String, String)]) -> Int? {
            let result = ProxyHeaders.upstream(headers(pairs), capability: capability, ownHosts: nil, requireHost: true, capabilityRequired: false)
            if case .failure(let refusal) = result { return refusal.status }
            return nil
        }
        #expect(status([("Host", "localhost")]) == nil)
        #expect(status([("Host", "example.invalid"), ("Authorization", "Bearer \(capability.value)")]) == nil)
        #expect(status([("Host", "localhost"), ("Authorization", "Bearer \(ProxyCapability().value)")]) == 401)
        #expect(status([("Host", "localhost"), ("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x")]) == 401)
        #expect(status([("Host", "localhost"), ("Host", "localhost")]) == 400)
        #expect(status([("Host", "localhost"), ("Authorization", "Bearer \(capability.value)"), ("Authorization", "Bearer \(capability.value)")]) == 400)
        let out = try? ProxyHeaders.upstream(headers([("Host", "localhost"), ("Proxy-Authorization", "Basic x")]), capability: capability,
            ownHosts: nil, requireHost: true, capabilityRequired: false).get()
        #expect(out?.map(\.name) == ["X-Tallyfy-Client"])
    }

    @Test func countsAreKeptPerListener() {
        let counters = ProxyCounters(unixSocket: true)
        counters.count(over: .tcp, requests: 3, refusals: 1)
        counters.count(over: .unix, requests: 2, refusals: 1)
        counters.countOtherUser()
        let snapshot = counters.snapshot
        #expect(snapshot.line(for: .tcp) == "3 requests, 1 refused")
        #expect(snapshot.line(for: .unix) == "2 requests, 1 refused, 1 connection from another user refused")
        #expect(snapshot.line == "5 requests, 2 refused, 0 renewals, 0 retried after a 401, 0 upstream failures, 1 connection from another user refused")
        #expect(ProxyCounters().snapshot.unixSocket == nil, "exec --proxy has no socket")
    }

    @Test func capabilitiesAre256RandomBitsAndDiffer() {
        let values = Set((0..<100).map { _ in ProxyCapability().value })
        #expect(values.count == 100)
        #expect(values.allSatisfy { $0.hasPrefix("tvproxy_") && $0.count == 8 + 64 })
    }

    @Test func refusalsAreInTallyfysErrorShape() throws {
        let body = ProxyRefusal(403, "VAULT_PROXY_FORBIDDEN", "a \"quoted\"\nline").body
        let json = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
        #expect(json["error"] as? Bool == true)
        #expect(json["code"] as? String == "VAULT_PROXY_FORBIDDEN")
        #expect(json["message"] as? String == "a \"quoted\"\nline")
    }
}

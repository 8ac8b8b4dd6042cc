import Foundation
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

@Suite struct EndpointURLTests {
    @Test(arguments: [
        "https://go.tallyfy.com/oauth/token",
        "https://go.tallyfy.com/api",
        "https://go.tallyfy.com/api/",
        "HTTPS://go.tallyfy.com:8443/api",
        "http://127.0.0.1:8080/oauth/token",
        "http://127.5.6.7/api",
        "http://localhost:9000/api",
        "http://LOCALHOST/api",
        "http://[::1]:8080/api",
        "http://[0:0:0:0:0:0:0:1]/api",
    ])
    func acceptedURLs(string: String) throws {
        let url = try EndpointURL.validate(string, name: "token URL")
        #expect(url.absoluteString == string)
    }

    @Test(arguments: [
        "http://go.tallyfy.com/oauth/token",
        "http://128.0.0.1/api",
        "http://10.0.0.1/api",
        "http://localhost.example.com/api",
        // A trailing dot makes a fully qualified name that goes to DNS (issue 9).
        "http://localhost./api",
        "http://LOCALHOST.:8080/oauth/token",
        "http://127.0.0.1./api",
        "http://127.0.0.1.nip.io/api",
        "http://127.attacker.invalid/api",
        "http://127.0.0.1.example.invalid:8080/api",
        "http://[::2]/api",
        "http://0.0.0.0/api",
        "ftp://go.tallyfy.com/api",
        "go.tallyfy.com/api",
        "https:///api",
        "https://user:pass@go.tallyfy.com/api",
        "https://go.tallyfy.com/api?x=1",
        "https://go.tallyfy.com/api#frag",
        "https://go.tallyfy.com/ api",
        "",
        "not a url",
    ])
    func refusedURLs(string: String) throws {
        let error = try #require(throws: VaultError.self) { try EndpointURL.validate(string, name: "API URL") }
        #expect(error.kind == .usage)
        #expect(error.message.hasPrefix("API URL"))
        #expect(error.hint != nil)
        #expect(!error.description.contains("pass@"))
    }

    @Test func localhostMustResolveToLoopbackOnly() {
        #expect(EndpointURL.resolvesToLoopbackOnly("127.0.0.1"))
        #expect(EndpointURL.resolvesToLoopbackOnly("::1"))
        #expect(!EndpointURL.resolvesToLoopbackOnly("192.0.2.1"))
        // This machine's localhost is loopback, or the URL is refused.
        let accepted = (try? EndpointURL.validate("http://localhost:9/api", name: "API URL")) != nil
        #expect(accepted == EndpointURL.resolvesToLoopbackOnly("localhost"))
    }

    @Test func plainHTTPMessageExplainsWhy() throws {
        let error = try #require(throws: VaultError.self) {
            try EndpointURL.validate("http://go.tallyfy.com/oauth/token", name: "--token-url")
        }
        #expect(error.message.contains("--token-url must use https://"))
        #expect(error.hint?.contains("loopback") == true)
    }

    // MARK: - Request URLs and bodies

    @Test func apiURLsWithAndWithoutTrailingSlash() throws {
        for base in ["https://go.tallyfy.com/api", "https://go.tallyfy.com/api/", "https://go.tallyfy.com/api//"] {
            let url = try TallyfyClient.apiURL(URL(string: base)!, orgID: "org123", path: ["users"])
            #expect(url.absoluteString == "https://go.tallyfy.com/api/applications/org123/users")
        }
    }

    @Test func emailIsOnePathSegment() throws {
        let url = try TallyfyClient.apiURL(
            URL(string: "http://127.0.0.1:8080/api/")!, orgID: "org 1/x",
            path: ["users", "first.last+tag@example.com", "token"])
        #expect(url.absoluteString
            == "http://127.0.0.1:8080/api/applications/org%201%2Fx/users/first.last%2Btag@example.com/token")
        let sneaky = try TallyfyClient.apiURL(
            URL(string: "https://go.tallyfy.com/api")!, orgID: "o", path: ["users", "a/../b?c#d@e.com", "token"])
        #expect(sneaky.absoluteString == "https://go.tallyfy.com/api/applications/o/users/a%2F..%2Fb%3Fc%23d@e.com/token")
        #expect(TallyfyClient.pathSegment("..") == "%2E%2E")
        #expect(TallyfyClient.pathSegment("ü") == "%C3%BC")
    }

    @Test func apiURLsAreCheckedToo() {
        #expect(throws: VaultError.self) {
            try TallyfyClient.apiURL(URL(string: "http://example.com/api")!, orgID: "o", path: ["users"])
        }
        #expect(throws: VaultError.self) {
            try TallyfyClient.apiURL(URL(string: "https://example.com/api")!, orgID: "", path: ["users"])
        }
    }

    @Test func formEncodingSurvivesAnySecret() {
        let body = FormEncoding.encode([
            ("grant_type", "client_credentials"),
            ("client_id", "id-1"),
            ("client_secret", "a&b=c+d e%f/é🔑~"),
            ("scope", "*"),
        ])
        #expect(body == "grant_type=client_credentials&client_id=id-1&client_secret=a%26b%3Dc%2Bd+e%25f%2F%C3%A9%F0%9F%94%91%7E&scope=*")
        // and it round-trips through a standard decoder
        var components = URLComponents()
        components.percentEncodedQuery = body.replacingOccurrences(of: "+", with: "%20")
        let secret = components.queryItems?.first { $0.name == "client_secret" }?.value
        #expect(secret == "a&b=c+d e%f/é🔑~")
    }

    @Test func statusTextUsesStandardPhrases() {
        #expect(Reply.statusText(503) == "503 Service Unavailable")
        #expect(Reply.statusText(429) == "429 Too Many Requests")
        #expect(Reply(status: 200, contentType: "text/html; charset=UTF-8", body: Data()).contentTypeText == "text/html")
        #expect(Reply(status: 200, contentType: nil, body: Data()).contentTypeText == "none")
    }
}

import Foundation
import Testing

@testable import TallyfyVaultCore

/// The client writes its requests and reads the answers by hand, the agent
/// with Codable: each must read exactly what the other writes, and the
/// client's reader must refuse what `JSONDecoder` refuses.
@Suite struct AgentWireTests {
    /// Strings a path, profile or email might hold, and some no one should.
    static let awkward = ["plain", "", "quote \" and backslash \\ and slash /", "tab\tnew\nline\r\u{1}\u{1f}",
        "é ü 漢字", "emoji 😀 and 𝄞", "\u{7f}\u{2028}"]

    @Test(arguments: awkward)
    func requestsReadByTheAgentAsWritten(_ text: String) throws {
        for request in [
            AgentProtocol.Request(op: .token, vault: "/v/\(text)", profile: text, user: text, minimumLifetime: 3600, renewal: "whenStale"),
            AgentProtocol.Request(op: .token, vault: text, profile: "default", minimumLifetime: 0.25, renewal: "never"),
            AgentProtocol.Request(op: .token, vault: text, profile: "default", minimumLifetime: 1e20),
            AgentProtocol.Request(op: .status),
        ] {
            let read = try JSONDecoder().decode(AgentProtocol.Request.self, from: Data(try request.json()))
            #expect(read == request)
        }
    }

    @Test func aMinimumLifetimeThatIsNotANumberIsNotSent() {
        #expect(throws: AgentError.self) { try AgentProtocol.Request(op: .token, minimumLifetime: .nan).json() }
    }

    @Test(arguments: awkward)
    func answersReadByTheClientAsWritten(_ text: String) throws {
        var grant = TokenGrant(profile: text, orgID: "org", apiURL: "https://go.tallyfy.com/api", token: "eyJ.\(text)",
            expiresAt: Date(timeIntervalSince1970: 1_900_000_000.5), user: text)
        grant.renewalFailure = text
        let answers = [
            AgentProtocol.Answer(ok: true, grant: AgentProtocol.WireGrant(grant)),
            AgentProtocol.Answer(ok: true, grant: AgentProtocol.WireGrant(TokenGrant(profile: "p", orgID: "o", apiURL: "u", token: "t",
                expiresAt: Date(timeIntervalSince1970: 0), user: nil))),
            AgentProtocol.Answer(ok: false, error: "failed", message: text, hint: text, exitStatus: 69),
            .failure("locked", "the agent holds no key"),
            AgentProtocol.Answer(ok: true, status: AgentProtocol.Status(vault: text, locked: false, pid: 4242,
                startedAt: 1_800_000_000.25, idleTimeout: 28_800, maxLifetime: nil, served: 12, renewals: 3)),
        ]
        for answer in answers {
            for formatting: JSONEncoder.OutputFormatting in [[], [.sortedKeys, .withoutEscapingSlashes], [.prettyPrinted]] {
                let encoder = JSONEncoder()
                encoder.outputFormatting = formatting
                #expect(try AgentProtocol.Answer(json: Array(encoder.encode(answer))) == answer)
            }
        }
    }

    @Test func escapesOtherWritersUseAreRead() throws {
        let json = #"{"version":1,"ok":true,"grant":{"profile":"caf\u00e9 \ud83d\ude00 \/ \b\f","orgID":"o","apiURL":"u","token":"t","expiresAt":1.5e9,"user":null}}"#
        let answer = try AgentProtocol.Answer(json: Array(json.utf8))
        #expect(answer.grant?.profile == "café 😀 / \u{8}\u{c}")
        #expect(answer.grant?.expiresAt == 1.5e9 && answer.grant?.user == nil)
    }

    @Test(arguments: [
        "", "{", "[]", "{\"version\":1}", "{\"version\":1,\"ok\":\"yes\"}", "{\"version\":1.5,\"ok\":true}",
        "{\"version\":1,\"ok\":true} x", "{\"version\":01,\"ok\":true}",
        "{\"version\":1,\"ok\":true,\"grant\":{\"profile\":\"p\"}}", "{\"version\":1,\"ok\":true,\"message\":\"\\ud800\"}",
        "{\"version\":1,\"ok\":true,\"message\":\"a\u{1}b\"}", "{\"version\":1,\"ok\":true,\"message\":\"\\x\"}",
        "{\"version\":1,\"ok\":true,\"exitStatus\":1e10}", "{\"version\":1,\"ok\":true,\"message\":\"open",
        String(repeating: "[", count: 100) + String(repeating: "]", count: 100),
    ])
    func whatJSONDecoderRefusesIsRefused(_ json: String) {
        #expect(throws: AgentError.self) { try AgentProtocol.Answer(json: Array(json.utf8)) }
        #expect(throws: (any Error).self) { try JSONDecoder().decode(AgentProtocol.Answer.self, from: Data(json.utf8)) }
    }

    /// JSONDecoder would read the first `ok` of two; the client refuses the
    /// frame rather than read it another way.
    @Test func aKeyGivenTwiceIsRefused() {
        #expect(throws: AgentError.self) { try AgentProtocol.Answer(json: Array(#"{"version":1,"ok":true,"ok":false}"#.utf8)) }
    }

    @Test func bytesThatAreNotUTF8AreRefused() {
        let json: [UInt8] = Array(#"{"version":1,"ok":true,"message":""#.utf8) + [0xff, 0xfe] + Array(#""}"#.utf8)
        #expect(throws: AgentError.self) { try AgentProtocol.Answer(json: json) }
    }
}

import Foundation
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

@Suite struct JWTExpiryTests {
    let received = Date(timeIntervalSince1970: 1_700_000_000)

    /// A JWT-shaped token with `payload` as its claims (signature not real).
    private func jwt(_ payload: String) -> String {
        func b64url(_ text: String) -> String {
            Data(text.utf8).base64EncodedString()
                .replacingOccurrences(of: "+", with: "-")
                .replacingOccurrences(of: "/", with: "_")
                .replacingOccurrences(of: "=", with: "")
        }
        return b64url(#"{"typ":"JWT","alg":"RS256"}"#) + "." + b64url(payload) + ".c2lnbmF0dXJl"
    }

    @Test func expiresInCountsFromReceipt() {
        let expiry = TokenExpiry.expiry(of: "opaque-token", expiresIn: 604_800, receivedAt: received)
        #expect(expiry == received.addingTimeInterval(604_800))
    }

    @Test func anEarlierJWTExpWins() {
        let token = jwt(#"{"sub":"app","exp":1700003600}"#)
        #expect(TokenExpiry.expiry(of: token, expiresIn: 604_800, receivedAt: received)
            == Date(timeIntervalSince1970: 1_700_003_600))
    }

    @Test func anEarlierExpiresInWins() {
        let token = jwt(#"{"exp":1800000000}"#)
        #expect(TokenExpiry.expiry(of: token, expiresIn: 60, receivedAt: received) == received.addingTimeInterval(60))
    }

    @Test func expAloneIsEnough() {
        let token = jwt(#"{"exp":1700000123.5}"#)
        #expect(TokenExpiry.expiry(of: token, expiresIn: nil, receivedAt: received)
            == Date(timeIntervalSince1970: 1_700_000_123.5))
        #expect(TokenExpiry.jwtExpiry(of: token) == Date(timeIntervalSince1970: 1_700_000_123.5))
    }

    @Test func neitherMeansUnknown() {
        #expect(TokenExpiry.knownExpiry(of: "opaque", expiresIn: nil, receivedAt: received) == nil)
        // the non-optional form treats it as already expired
        #expect(TokenExpiry.expiry(of: "opaque", expiresIn: nil, receivedAt: received) == received)
    }

    @Test(arguments: [
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJub25lIn0..sig",
        "eyJhbGciOiJub25lIn0.!!!.sig",
    ])
    func nonJWTsHaveNoExp(token: String) {
        #expect(TokenExpiry.jwtExpiry(of: token) == nil)
    }

    @Test(arguments: [
        #"{"exp":"1700003600"}"#,
        #"{"exp":true}"#,
        #"{"exp":null}"#,
        #"{"exp":-5}"#,
        #"{"sub":"x"}"#,
        #"[1,2,3]"#,
        #"not json"#,
    ])
    func unusableClaimsAreIgnored(payload: String) {
        let token = jwt(payload)
        #expect(TokenExpiry.jwtExpiry(of: token) == nil)
        #expect(TokenExpiry.expiry(of: token, expiresIn: 10, receivedAt: received) == received.addingTimeInterval(10))
    }

    @Test func base64URLWithoutPadding() {
        // "{}" with one and two padding characters removed, and "-"/"_" alphabet
        #expect(TokenExpiry.base64URLDecode("e30") == Data("{}".utf8))
        #expect(TokenExpiry.base64URLDecode("-_8") == Data([0xFB, 0xFF]))
        #expect(TokenExpiry.base64URLDecode("e30=") == nil)
        #expect(TokenExpiry.base64URLDecode("a") == nil)
    }

    // MARK: - Token answers

    private func decode(_ json: String) -> TokenResponse? {
        TokenResponse.decode(Data(json.utf8))
    }

    @Test func aNormalTokenAnswer() throws {
        let parsed = try #require(decode(#"{"token_type":"Bearer","expires_in":604800,"access_token":"abc.def-ghi"}"#))
        #expect(parsed.accessToken == "abc.def-ghi")
        #expect(parsed.expiresIn == 604_800)
        #expect(parsed.issued(receivedAt: received) == IssuedToken(accessToken: "abc.def-ghi", expiresAt: received.addingTimeInterval(604_800)))
    }

    @Test func lenientWhereItIsHarmless() throws {
        #expect(decode(#"{"token_type":"bearer","expires_in":"7776000","access_token":"x","extra":1}"#)?.expiresIn == 7_776_000)
        #expect(decode(#"{"token_type":"Bearer","expires_in":60.0,"access_token":"x"}"#)?.expiresIn == 60)
        // no expires_in: still a token, whose expiry must come from the JWT
        let noLifetime = try #require(decode(#"{"token_type":"Bearer","access_token":"opaque"}"#))
        #expect(noLifetime.issued(receivedAt: received) == nil)
        let jwtToken = jwt(#"{"exp":1700000600}"#)
        let withExp = try #require(decode(#"{"token_type":"Bearer","access_token":"\#(jwtToken)"}"#))
        #expect(withExp.issued(receivedAt: received)?.expiresAt == Date(timeIntervalSince1970: 1_700_000_600))
    }

    @Test(arguments: [
        "<html><body>502 Bad Gateway</body></html>",
        #"{"token_type":"Bearer","expires_in":604800,"access_tok"#,
        #"{"token_type":"Bearer","expires_in":604800}"#,
        #"{"token_type":"Bearer","expires_in":604800,"access_token":""}"#,
        #"{"token_type":"Bearer","expires_in":604800,"access_token":"has space"}"#,
        #"{"token_type":"Bearer","expires_in":604800,"access_token":42}"#,
        #"{"token_type":"mac","expires_in":604800,"access_token":"x"}"#,
        #"{"expires_in":604800,"access_token":"x"}"#,
        #"{"token_type":"Bearer","expires_in":0,"access_token":"x"}"#,
        #"{"token_type":"Bearer","expires_in":-1,"access_token":"x"}"#,
        #"{"token_type":"Bearer","expires_in":1.5,"access_token":"x"}"#,
        #"{"token_type":"Bearer","expires_in":"soon","access_token":"x"}"#,
        #"["access_token"]"#,
        "",
    ])
    func unexpectedAnswersAreRejected(body: String) {
        #expect(decode(body) == nil)
    }

    @Test func oauthErrorCodesAreReadButNothingElse() {
        #expect(errorCode(in: Data(#"{"error":"invalid_client","error_description":"Client authentication failed"}"#.utf8)) == "invalid_client")
        #expect(errorCode(in: Data(#"{"error":"<script>alert(1)</script>"}"#.utf8)) == nil)
        #expect(errorCode(in: Data("<html>oops</html>".utf8)) == nil)
        #expect(errorCode(in: Data(#"{"message":"x"}"#.utf8)) == nil)
    }
}

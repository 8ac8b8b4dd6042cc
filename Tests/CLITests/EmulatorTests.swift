import Foundation
import Testing

/// End-to-end tests of the real `tallyfy-emulator` binary over HTTP.
@Suite("tallyfy-emulator")
struct EmulatorTests {
    static let client = (id: "client-1", secret: "s3cret:with:colons")
    static let org = "org-test"

    /// The headers every Tallyfy API call carries.
    static func apiHeaders(_ token: String?) -> [String: String] {
        var headers = ["X-Tallyfy-Client": "APIClient", "Accept": "application/json"]
        if let token { headers["Authorization"] = "Bearer \(token)" }
        return headers
    }

    static func credentials(_ client: (id: String, secret: String) = client) -> [String: String] {
        ["grant_type": "client_credentials", "client_id": client.id, "client_secret": client.secret, "scope": "*"]
    }

    /// Obtains an application token or fails the test.
    static func appToken(_ emulator: Emulator, _ client: (id: String, secret: String) = client) async throws -> String {
        let reply = try await emulator.send(.POST, emulator.tokenURL, form: credentials(client))
        try reply.expect(200)
        return try #require(reply.json["access_token"] as? String)
    }

    static func createUser(_ emulator: Emulator, token: String, _ body: [String: Any]) async throws -> Emulator.Reply {
        try await emulator.send(.POST, "/api/applications/\(org)/users", headers: apiHeaders(token),
                                json: try JSONSerialization.data(withJSONObject: body))
    }

    @Test func applicationTokenIsIssuedAndAcceptedByMe() async throws {
        let emulator = try await Emulator.start(clients: [Self.client], appTokenTTL: 3600)
        defer { emulator.stop() }

        let requestedAt = Int(Date().timeIntervalSince1970)
        let reply = try await emulator.send(.POST, emulator.tokenURL, form: Self.credentials())
        let answeredAt = Int(Date().timeIntervalSince1970)
        try reply.expect(200)
        #expect(reply.json["token_type"] as? String == "Bearer")
        #expect(reply.json["expires_in"] as? Int == 3600)
        let token = try #require(reply.json["access_token"] as? String)
        #expect(token.split(separator: ".").count == 3)

        let me = try await emulator.send(.GET, "/api/organizations/\(Self.org)/me", headers: Self.apiHeaders(token))
        try me.expect(200)
        #expect(me.json["kind"] as? String == "application")
        #expect(me.json["client_id"] as? String == Self.client.id)
        #expect(me.json["org"] as? String == Self.org)
        #expect(me.json["email"] == nil)
        let expiresAt = try #require(me.json["expires_at"] as? Int)
        // Issued between the request and the answer (a loaded machine may take long).
        #expect((requestedAt + 3600 - 1...answeredAt + 3600 + 1).contains(expiresAt))

        // Two tokens in the same second still differ (random jti).
        let second = try await Self.appToken(emulator)
        #expect(second != token)
    }

    @Test func wrongSecretIsInvalidClient() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }

        let wrong = try await emulator.send(.POST, emulator.tokenURL,
                                            form: Self.credentials((Self.client.id, "not-the-secret")))
        #expect(wrong.status == 401)
        #expect(wrong.json["error"] as? String == "invalid_client")
        #expect(wrong.json["error_description"] as? String == "Client authentication failed")

        let unknown = try await emulator.send(.POST, emulator.tokenURL,
                                              form: Self.credentials(("nobody", Self.client.secret)))
        #expect(unknown.status == 401)
        #expect(unknown.json["error"] as? String == "invalid_client")

        var badGrant = Self.credentials()
        badGrant["grant_type"] = "password"
        let grant = try await emulator.send(.POST, emulator.tokenURL, form: badGrant)
        #expect(grant.status == 400)
        #expect(grant.json["error"] as? String == "unsupported_grant_type")

        let missing = try await emulator.send(.POST, emulator.tokenURL,
                                              form: ["grant_type": "client_credentials", "client_id": Self.client.id])
        #expect(missing.status == 400)
        #expect(missing.json["error"] as? String == "invalid_request")
    }

    @Test func invalidUserFieldsAreListed() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        let token = try await Self.appToken(emulator)

        let reply = try await Self.createUser(emulator, token: token, [
            "first_name": String(repeating: "x", count: 33),
            "email": "not an email",
            "role": "owner",
            "timezone": "Mars/Olympus_Mons",
        ])
        #expect(reply.status == 422)
        let errors = try #require(reply.json["errors"] as? [String: [String]])
        #expect(Set(errors.keys) == ["first_name", "last_name", "email", "role", "timezone"])

        for email in ["a@b", "@example.com", "a@@example.com", "a b@example.com", "a@example.com."] {
            let bad = try await Self.createUser(emulator, token: token,
                                                ["first_name": "A", "last_name": "B", "email": email])
            #expect(bad.status == 422, "\(email) should be refused")
        }
    }

    @Test func userIsCreatedOnceThenConflicts() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        let token = try await Self.appToken(emulator)

        let created = try await Self.createUser(emulator, token: token, [
            "first_name": "Ada", "last_name": "Lovelace", "email": "Ada@Example.com",
            "role": "admin", "timezone": "Europe/London",
        ])
        try created.expect(201)
        let data = try #require(created.json["data"] as? [String: Any])
        #expect(data["email"] as? String == "Ada@Example.com")
        #expect(data["role"] as? String == "admin")
        #expect(data["timezone"] as? String == "Europe/London")
        #expect((data["id"] as? String)?.isEmpty == false)

        let duplicate = try await Self.createUser(emulator, token: token, [
            "first_name": "Ada", "last_name": "L", "email": "ada@example.COM",
        ])
        // Tallyfy reports a taken email as a 422 validation error of the field.
        #expect(duplicate.status == 422)
        #expect(duplicate.json["error"] as? Bool == true)
        let fieldErrors = try #require(duplicate.json["errors"] as? [String: [String]])
        #expect(fieldErrors["email"] == ["The email has already been taken."])

        // The user token, by a percent-encoded email in another case.
        let userToken = try await emulator.send(
            .POST, "/api/applications/\(Self.org)/users/ada%40example.com/token", headers: Self.apiHeaders(token))
        try userToken.expect(200)
        #expect(userToken.json["expires_in"] as? Int == 7_776_000)
        let bearer = try #require(userToken.json["access_token"] as? String)
        let me = try await emulator.send(.GET, "/api/organizations/\(Self.org)/me", headers: Self.apiHeaders(bearer))
        try me.expect(200)
        #expect(me.json["kind"] as? String == "user")
        #expect(me.json["email"] as? String == "Ada@Example.com")

        // A user token may not provision users.
        let forbidden = try await Self.createUser(emulator, token: bearer,
                                                  ["first_name": "B", "last_name": "C", "email": "b@example.com"])
        #expect(forbidden.status == 403)
    }

    @Test func unknownUserHasNoToken() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        let token = try await Self.appToken(emulator)

        let reply = try await emulator.send(
            .POST, "/api/applications/\(Self.org)/users/ghost%40example.com/token", headers: Self.apiHeaders(token))
        #expect(reply.status == 404)
        #expect(reply.json["code"] as? String == "RESOURCE_NOT_FOUND")
        #expect(reply.json["message"] as? String == "Resource not found")
    }

    @Test func apiCallsNeedTheClientHeaderAValidTokenAndTheirOrg() async throws {
        let emulator = try await Emulator.start(orgs: [Self.org, "org-other"], clients: [Self.client])
        defer { emulator.stop() }
        let token = try await Self.appToken(emulator)
        let me = "/api/organizations/\(Self.org)/me"

        let noHeader = try await emulator.send(.GET, me, headers: ["Authorization": "Bearer \(token)"])
        // Tallyfy: "Requests without it will fail - typically returning
        // 'endpoint not found' or a 401 error".
        #expect(noHeader.status == 401)
        #expect(noHeader.json["code"] as? String == "MISSING_CLIENT_HEADER")

        let noToken = try await emulator.send(.GET, me, headers: Self.apiHeaders(nil))
        #expect(noToken.status == 401)
        #expect(noToken.json["error"] as? Bool == true)
        #expect(noToken.json["message"] as? String == "Unauthenticated.")

        // Change the first character of the signature (the last one may carry
        // only padding bits): forged.
        var parts = token.split(separator: ".").map(String.init)
        let first = parts[2].removeFirst()
        parts[2] = (first == "A" ? "B" : "A") + parts[2]
        let forged = parts.joined(separator: ".")
        let forgedReply = try await emulator.send(.GET, me, headers: Self.apiHeaders(forged))
        #expect(forgedReply.status == 401)

        // Another organization and an unknown one look the same, as on the real API.
        let otherOrg = try await emulator.send(.GET, "/api/organizations/org-other/me", headers: Self.apiHeaders(token))
        #expect(otherOrg.status == 403)
        #expect(otherOrg.json["message"] as? String == "You don't have application's permissions for this organization!")

        let unknownOrg = try await emulator.send(.GET, "/api/organizations/org-nope/me", headers: Self.apiHeaders(token))
        #expect(unknownOrg.status == 403)
        #expect(unknownOrg.json["message"] as? String == "You don't have application's permissions for this organization!")
        #expect(unknownOrg.header("X-Request-Id")?.isEmpty == false)
    }

    /// Tallyfy's docs show `X-Tallyfy-Client: APIClient`, its Python SDK
    /// sends `TallyfySDK`: any non-empty value is accepted, and each is
    /// recorded so tests can still check what the vault sends.
    @Test func anyNonEmptyClientHeaderIsAcceptedAndRecorded() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        let token = try await Self.appToken(emulator)
        let me = "/api/organizations/\(Self.org)/me"
        let bearer = ["Authorization": "Bearer \(token)"]

        for value in ["TallyfySDK", "APIClient", "my-integration/1.0"] {
            let reply = try await emulator.send(.GET, me, headers: bearer.merging(["X-Tallyfy-Client": value]) { $1 })
            #expect(reply.status == 200, "X-Tallyfy-Client: \(value): \(reply.text)")
        }
        for headers in [bearer, bearer.merging(["X-Tallyfy-Client": ""]) { $1 }, bearer.merging(["X-Tallyfy-Client": "   "]) { $1 }] {
            let reply = try await emulator.send(.GET, me, headers: headers)
            #expect(reply.status == 401)
            #expect(reply.json["code"] as? String == "MISSING_CLIENT_HEADER")
        }
        // The token request (OAuth, not Tallyfy's API) is not recorded.
        #expect(try await emulator.requests() == .init(
            clientHeaders: ["TallyfySDK": 1, "APIClient": 1, "my-integration/1.0": 1], withoutClientHeader: 3))
        try await emulator.reset()
        #expect(try await emulator.requests() == .init(clientHeaders: [:], withoutClientHeader: 0))
    }

    /// The first calls of an integration written with Tallyfy's Python SDK,
    /// in the envelopes it reads: `{"data": {…}}` and `{"data": […], "meta": {"pagination": {…}}}`.
    @Test func readEndpointsAnswerInTallyfysEnvelopes() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        let token = try await Self.appToken(emulator)
        for (first, last) in [("Cy", "Young"), ("Ann", "Lee"), ("Bob", "Ray")] {
            let reply = try await Self.createUser(emulator, token: token,
                ["first_name": first, "last_name": last, "email": "\(first.lowercased())@example.com"])
            try reply.expect(201)
        }
        let issued = try await emulator.send(.POST, "/api/applications/\(Self.org)/users/ann%40example.com/token",
                                             headers: Self.apiHeaders(token))
        let annToken = try #require(issued.json["access_token"] as? String)

        let me = try await emulator.send(.GET, "/api/organizations/\(Self.org)/me", headers: Self.apiHeaders(annToken))
        try me.expect(200)
        let user = try #require(me.json["data"] as? [String: Any])
        #expect(user["email"] as? String == "ann@example.com")
        #expect(user["username"] as? String == "ann@example.com")
        #expect(user["full_name"] as? String == "Ann Lee")
        #expect(user["first_name"] as? String == "Ann" && user["last_name"] as? String == "Lee")
        #expect(me.json["kind"] as? String == "user")
        let appMe = try await emulator.send(.GET, "/api/organizations/\(Self.org)/me", headers: Self.apiHeaders(token))
        #expect(appMe.json["data"] == nil && appMe.json["kind"] as? String == "application")

        func emails(_ reply: Emulator.Reply) -> [String] {
            (reply.json["data"] as? [[String: Any]] ?? []).compactMap { $0["email"] as? String }
        }
        func pagination(_ reply: Emulator.Reply) -> [String: Int] {
            (reply.json["meta"] as? [String: Any])?["pagination"] as? [String: Int] ?? [:]
        }
        let users = "/api/organizations/\(Self.org)/users"
        for bearer in [token, annToken] {
            let all = try await emulator.send(.GET, users, headers: Self.apiHeaders(bearer))
            try all.expect(200)
            #expect(emails(all) == ["ann@example.com", "bob@example.com", "cy@example.com"])
            #expect(pagination(all) == ["total": 3, "count": 3, "per_page": 100, "current_page": 1, "total_pages": 1])
        }
        let secondPage = try await emulator.send(.GET, users + "?page=2&per_page=2", headers: Self.apiHeaders(token))
        #expect(emails(secondPage) == ["cy@example.com"])
        #expect(pagination(secondPage) == ["total": 3, "count": 1, "per_page": 2, "current_page": 2, "total_pages": 2])
        let otherOrg = try await emulator.send(.GET, "/api/organizations/org-nope/users", headers: Self.apiHeaders(token))
        #expect(otherOrg.status == 403)

        let organizations = try await emulator.send(.GET, "/api/me/organizations", headers: Self.apiHeaders(annToken))
        try organizations.expect(200)
        #expect((organizations.json["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == [Self.org])
        let appOrganizations = try await emulator.send(.GET, "/api/me/organizations", headers: Self.apiHeaders(token))
        #expect(appOrganizations.status == 401)

        let unknown = try await emulator.send(.GET, "/api/organizations/\(Self.org)/runs", headers: Self.apiHeaders(token))
        #expect(unknown.status == 404)
        #expect(unknown.json["code"] as? String == "ENDPOINT_NOT_FOUND")
        #expect(try await emulator.counts()["users.list"] == 4)
    }

    @Test func revokeOnReissueLeavesEachClientAndUserOneToken() async throws {
        let emulator = try await Emulator.start(clients: [Self.client], extraArguments: ["--revoke-on-reissue"])
        defer { emulator.stop() }
        let me = "/api/organizations/\(Self.org)/me"
        /// The status and error code `GET …/me` answers `token` with, e.g. `401 TOKEN_REVOKED`.
        func status(_ token: String) async throws -> String {
            let reply = try await emulator.send(.GET, me, headers: Self.apiHeaders(token))
            return "\(reply.status) \(reply.json["code"] as? String ?? "-")"
        }

        let firstApp = try await Self.appToken(emulator)
        let app = try await Self.appToken(emulator)
        #expect(try await status(firstApp) == "401 TOKEN_REVOKED")
        #expect(try await status(app) == "200 -")

        for name in ["ann", "bob"] {
            try await Self.createUser(emulator, token: app, ["first_name": name, "last_name": "X", "email": "\(name)@example.com"])
                .expect(201)
        }
        func userToken(_ email: String) async throws -> String {
            let reply = try await emulator.send(.POST, "/api/applications/\(Self.org)/users/\(email)/token",
                                                headers: Self.apiHeaders(app))
            return try #require(reply.json["access_token"] as? String)
        }
        let firstAnn = try await userToken("ann%40example.com")
        let bob = try await userToken("bob%40example.com")
        let ann = try await userToken("ANN%40example.com")  // the same user in another case
        #expect(try await status(firstAnn) == "401 TOKEN_REVOKED")
        #expect(try await status(ann) == "200 -")
        #expect(try await status(bob) == "200 -")  // another user's token stays
        #expect(try await status(app) == "200 -")  // user tokens leave the client's own alone
    }

    /// `GET /__emulator/issued` is the record tools/partition-test checks a
    /// fleet's token requests against: every token issued, in order, named
    /// by its `jti`, never the token itself.
    @Test func issuedListsEveryTokenByItsClaimsNeverTheToken() async throws {
        let emulator = try await Emulator.start(clients: [Self.client], appTokenTTL: 3600)
        defer { emulator.stop() }
        let first = try await Self.appToken(emulator)
        let app = try await Self.appToken(emulator)
        try await Self.createUser(emulator, token: app, ["first_name": "Ann", "last_name": "X", "email": "ann@example.com"])
            .expect(201)
        let user = try await emulator.send(.POST, "/api/applications/\(Self.org)/users/ann%40example.com/token",
                                           headers: Self.apiHeaders(app))
        let userToken = try #require(user.json["access_token"] as? String)

        let reply = try await emulator.send(.GET, "/__emulator/issued")
        try reply.expect(200)
        let tokens = try #require(reply.json["tokens"] as? [[String: Any]])
        /// The `jti` claim of a JWT, read from its payload.
        func jti(_ token: String) throws -> String {
            var payload = String(token.split(separator: ".")[1]).replacingOccurrences(of: "-", with: "+")
                .replacingOccurrences(of: "_", with: "/")
            payload += String(repeating: "=", count: (4 - payload.count % 4) % 4)
            let data = try #require(Data(base64Encoded: payload))
            let claims = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            return try #require(claims["jti"] as? String)
        }
        #expect(tokens.compactMap { $0["jti"] as? String } == [try jti(first), try jti(app), try jti(userToken)])
        #expect(tokens.compactMap { $0["kind"] as? String } == ["application", "application", "user"])
        #expect(tokens.compactMap { $0["holder"] as? String } == [
            "application \(Self.client.id)", "application \(Self.client.id)", "user \(Self.org) ann@example.com"])
        let times = tokens.compactMap { $0["issuedAt"] as? Double }
        #expect(times.count == 3 && times == times.sorted())
        for token in tokens {
            #expect((token["exp"] as? Int ?? 0) - (token["iat"] as? Int ?? 0) == (token["kind"] as? String == "user" ? 7_776_000 : 3600))
        }
        let text = String(decoding: reply.body, as: UTF8.self)
        for token in [first, app, userToken] { #expect(!text.contains(token)) }
    }

    @Test func withoutRevokeOnReissueEarlierTokensStayValid() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        let first = try await Self.appToken(emulator)
        let second = try await Self.appToken(emulator)
        for token in [first, second] {
            let reply = try await emulator.send(.GET, "/api/organizations/\(Self.org)/me", headers: Self.apiHeaders(token))
            #expect(reply.status == 200)
        }
    }

    @Test func expiredTokenIsRefused() async throws {
        let emulator = try await Emulator.start(clients: [Self.client], appTokenTTL: 1)
        defer { emulator.stop() }
        let token = try await Self.appToken(emulator)
        try await emulator.advanceClock(by: 5)  // the 1-second token has expired

        let reply = try await emulator.send(.GET, "/api/organizations/\(Self.org)/me", headers: Self.apiHeaders(token))
        #expect(reply.status == 401)
        #expect(reply.json["message"] as? String == "Unauthenticated.")
    }

    @Test func injectedFailureHappensOnceThenTheEndpointWorks() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "status", status: 503, times: 1))

        let failed = try await emulator.send(.POST, emulator.tokenURL, form: Self.credentials())
        #expect(failed.status == 503)
        let succeeded = try await emulator.send(.POST, emulator.tokenURL, form: Self.credentials())
        #expect(succeeded.status == 200)

        // Faults for other endpoints do not touch this one; several apply in order.
        try await emulator.inject(["endpoint": "me", "kind": "status", "status": 500])
        try await emulator.inject(["endpoint": "token", "kind": "broken-json", "times": 1])
        try await emulator.inject(["endpoint": "*", "kind": "html", "times": 1])
        let broken = try await emulator.send(.POST, emulator.tokenURL, form: Self.credentials())
        #expect(broken.status == 200)
        #expect(broken.text == #"{"access_token": "abc"#)
        let html = try await emulator.send(.POST, emulator.tokenURL, form: Self.credentials())
        #expect(html.status == 502)
        #expect(html.header("Content-Type")?.hasPrefix("text/html") == true)
        _ = try await Self.appToken(emulator)  // both one-off faults are used up

        let failing = try await emulator.send(.GET, "/api/organizations/\(Self.org)/me", headers: Self.apiHeaders(nil))
        #expect(failing.status == 500)  // the "me" fault stays until cleared
        try await emulator.clearFaults()
        let token = try await Self.appToken(emulator)
        let me = try await emulator.send(.GET, "/api/organizations/\(Self.org)/me", headers: Self.apiHeaders(token))
        #expect(me.status == 200)
    }

    @Test func rateLimitCarriesRetryAfter() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "rate-limit", retryAfter: 7, times: 1))

        let sentAt = Int(Date().timeIntervalSince1970)
        let limited = try await emulator.send(.POST, emulator.tokenURL, form: Self.credentials())
        #expect(limited.status == 429)
        #expect(limited.header("Retry-After") == "7")
        #expect(limited.header("X-RateLimit-Limit") == "600")
        #expect(limited.header("X-RateLimit-Remaining") == "0")
        #expect(limited.header("X-RateLimit-Reset").flatMap(Int.init) ?? 0 >= sentAt + 7)
        #expect(limited.json["code"] as? String == "RATE_LIMIT_EXCEEDED")
    }

    /// `GET /api/me`, as Tallyfy's tools check a token: the user for a user
    /// token (Tallyfy's `{"data": {…}}` envelope), 401 for an application token.
    @Test func apiMeAnswersForUserTokensOnly() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        let token = try await Self.appToken(emulator)
        try await Self.createUser(emulator, token: token,
                                  ["first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"]).expect(201)
        let issued = try await emulator.send(
            .POST, "/api/applications/\(Self.org)/users/ada@example.com/token", headers: Self.apiHeaders(token))
        let userToken = try #require(issued.json["access_token"] as? String)

        let me = try await emulator.send(.GET, "/api/me", headers: Self.apiHeaders(userToken))
        try me.expect(200)
        let data = try #require(me.json["data"] as? [String: Any])
        #expect(data["email"] as? String == "ada@example.com")
        #expect(data["first_name"] as? String == "Ada")

        let asApplication = try await emulator.send(.GET, "/api/me", headers: Self.apiHeaders(token))
        #expect(asApplication.status == 401)
        #expect(asApplication.json["error"] as? Bool == true)

        let noHeader = try await emulator.send(.GET, "/api/me", headers: ["Authorization": "Bearer \(userToken)"])
        #expect(noHeader.status == 401)
    }

    @Test func unknownAPIPathsAreEndpointNotFound() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        let reply = try await emulator.send(.POST, "/api/oauth/token", form: Self.credentials())
        #expect(reply.status == 404)
        #expect(reply.json["code"] as? String == "ENDPOINT_NOT_FOUND")
        #expect(reply.json["message"] as? String == "API endpoint not found")
        // The real endpoints still answer.
        #expect(try await emulator.send(.POST, emulator.tokenURL, form: Self.credentials()).status == 200)
    }

    @Test func namesThatAreURLsAreRefused() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        let token = try await Self.appToken(emulator)
        let reply = try await Self.createUser(emulator, token: token,
                                              ["first_name": "https://evil.example", "last_name": "L", "email": "u@example.com"])
        #expect(reply.status == 422)
        #expect((reply.json["errors"] as? [String: [String]])?["first_name"] == ["The first_name may not be a URL."])
    }

    @Test func delayIsServedLate() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "delay", delayMs: 800, times: 1))

        let started = Date()
        let reply = try await emulator.send(.POST, emulator.tokenURL, form: Self.credentials())
        #expect(reply.status == 200)
        #expect(Date().timeIntervalSince(started) >= 0.75)
    }

    @Test func countsEveryRequestWhateverItsOutcome() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        defer { emulator.stop() }
        #expect(try await emulator.counts() == ["token": 0, "users.create": 0, "users.token": 0, "users.list": 0, "me": 0])

        try await emulator.inject(Emulator.Fault(endpoint: "token", kind: "status", status: 503, times: 1))
        _ = try await emulator.send(.POST, emulator.tokenURL, form: Self.credentials())  // fault
        _ = try await emulator.send(.POST, emulator.tokenURL, form: Self.credentials(("x", "y")))  // 401
        let token = try await Self.appToken(emulator)
        _ = try await emulator.send(.GET, "/api/organizations/\(Self.org)/me", headers: [:])  // 401
        _ = try await emulator.send(.GET, "/api/organizations/\(Self.org)/me", headers: Self.apiHeaders(token))
        _ = try await Self.createUser(emulator, token: token, [:])  // 422
        _ = try await emulator.send(.POST, "/api/applications/\(Self.org)/users/x%40y.z/token",
                                    headers: Self.apiHeaders(token))  // 404

        // Concurrent requests all count.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<20 {
                group.addTask { _ = try await Self.appToken(emulator) }
            }
            try await group.waitForAll()
        }
        #expect(try await emulator.counts() == ["token": 23, "users.create": 1, "users.token": 1, "users.list": 0, "me": 2])

        try await emulator.reset()
        #expect(try await emulator.counts() == ["token": 0, "users.create": 0, "users.token": 0, "users.list": 0, "me": 0])
    }

    @Test func rotationAcceptsBothSecretsUntilTheOldIsRetired() async throws {
        let old = (id: "client-r", secret: "old-secret")
        let new = (id: "client-r", secret: "new-secret")
        let emulator = try await Emulator.start(clients: [old, new])
        defer { emulator.stop() }

        _ = try await Self.appToken(emulator, old)
        _ = try await Self.appToken(emulator, new)

        try await emulator.setSecrets(client: "client-r", secrets: [new.secret])
        let retired = try await emulator.send(.POST, emulator.tokenURL, form: Self.credentials(old))
        #expect(retired.status == 401)
        _ = try await Self.appToken(emulator, new)
    }

    @Test func stopsCleanlyOnSIGTERM() async throws {
        let emulator = try await Emulator.start(clients: [Self.client])
        _ = try await Self.appToken(emulator)
        #expect(emulator.stop() == 0)
        #expect(!emulator.isRunning)
    }

    @Test func refusesANonLoopbackHost() throws {
        let result = try Emulator.run(arguments: ["--host", "0.0.0.0", "--port", "0"])
        #expect(result.status == 64)
        #expect(result.stderr.contains("loopback"))
        #expect(result.stdout.isEmpty)

        let other = try Emulator.run(arguments: ["--host", "192.168.1.10", "--port", "0"])
        #expect(other.status == 64)
    }
}

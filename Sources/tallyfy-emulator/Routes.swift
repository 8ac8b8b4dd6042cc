import Foundation
import Hummingbird
import ServiceLifecycle

/// An answer that ends a request early (bad header, invalid token, …).
///
/// Thrown from the checks so handlers read top to bottom; the wrapper in
/// `EmulatorRoutes.endpoint(_:_:)` turns it back into the response.
struct Refusal: Error, Sendable {
    let response: Response
}

/// JSON and other response bodies.
enum Reply {
    static func json(_ status: HTTPResponse.Status, _ object: [String: Any], headers: HTTPFields = [:]) -> Response {
        // Only strings, numbers, arrays and dictionaries are ever passed in.
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return raw(status, data, contentType: "application/json", headers: headers)
    }

    static func raw(_ status: HTTPResponse.Status, _ body: Data, contentType: String, headers: HTTPFields = [:]) -> Response {
        var headers = headers
        headers[.contentType] = contentType
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
    }

    static func error(_ status: HTTPResponse.Status, _ code: String) -> Response {
        json(status, ["error": code])
    }

    /// Tallyfy's API error shape: `{"error": true, "code": "…", "message": "…"}`
    /// (tallyfy/documentation, open-api/api-clients/postman/troubleshooting.mdx).
    static func apiError(_ status: HTTPResponse.Status, code: String?, _ message: String, headers: HTTPFields = [:]) -> Response {
        var body: [String: Any] = ["error": true, "message": message]
        if let code { body["code"] = code }
        return json(status, body, headers: headers)
    }

    /// What the real API answers for an organization the token's client does
    /// not belong to, or one that does not exist (it does not tell them apart).
    static let noApplicationPermission = "You don't have application's permissions for this organization!"
}

extension HTTPFields.Element.Name {
    static let requestID = Self("X-Request-Id")!
    static let rateLimitLimit = Self("X-RateLimit-Limit")!
    static let rateLimitRemaining = Self("X-RateLimit-Remaining")!
    static let rateLimitReset = Self("X-RateLimit-Reset")!
}

extension HTTPFields {
    /// The first value of a header by name, case-insensitively (for headers
    /// HTTPTypes has no predefined name for).
    func value(named name: String) -> String? {
        let lowercased = name.lowercased()
        return first { $0.name.canonicalName == lowercased }?.value
    }
}

/// The Tallyfy endpoints and the `/__emulator/` admin surface.
struct EmulatorRoutes: Sendable {
    typealias Context = BasicRequestContext
    typealias Handler = @Sendable (Request, Context) async throws -> Response

    let state: EmulatorState
    let settings: EmulatorSettings

    /// Request bodies above this are refused; real clients send a few hundred bytes.
    static let maxBody = 64 * 1024

    func register(on router: Router<Context>) {
        router.post("/oauth/token", use: endpoint(.token, issueApplicationToken))
        router.post("/api/applications/:org/users", use: endpoint(.usersCreate, createUser))
        router.post("/api/applications/:org/users/:email/token", use: endpoint(.usersToken, issueUserToken))
        router.get("/api/me", use: endpoint(.me, apiMe))
        router.get("/api/organizations/:org/me", use: endpoint(.me, me))
        router.get("/api/me/organizations", use: endpoint(.me, myOrganizations))
        router.get("/api/organizations/:org/users", use: endpoint(.usersList, listUsers))
        // Any other API path: the real API's "wrong URL path" answer
        // (open-api/api-clients/postman/troubleshooting.mdx), so a
        // mistyped token URL under /api gets it too.
        let notFound: Handler = { _, _ in
            Reply.apiError(.notFound, code: "ENDPOINT_NOT_FOUND", "API endpoint not found")
        }
        for method in [HTTPRequest.Method.get, .post, .put, .patch, .delete] {
            router.on("/api/**", method: method, use: notFound)
        }

        router.get("/__emulator/counts") { _, _ in
            Reply.json(.ok, await state.countsSnapshot())
        }
        router.get("/__emulator/requests") { _, _ in
            let seen = await state.requestsSnapshot()
            return Reply.json(.ok, ["clientHeaders": seen.clientHeaders, "withoutClientHeader": seen.withoutClientHeader])
        }
        router.get("/__emulator/issued") { _, _ in
            let tokens = await state.issuedSnapshot().map { token -> [String: Any] in
                ["jti": token.jti, "kind": token.kind, "holder": token.holder, "iat": token.iat, "exp": token.exp,
                 "issuedAt": token.issuedAt]
            }
            return Reply.json(.ok, ["tokens": tokens])
        }
        router.post("/__emulator/reset") { _, _ in
            await state.reset()
            return Reply.json(.ok, ["ok": true])
        }
        router.post("/__emulator/faults", use: addFault)
        router.delete("/__emulator/faults") { _, _ in
            await state.clearFaults()
            return Reply.json(.ok, ["ok": true])
        }
        router.put("/__emulator/clients/:id", use: setClientSecrets)
        router.put("/__emulator/ttl", use: setLifetimes)
        router.post("/__emulator/clock", use: advanceClock)
    }

    // MARK: Counting, faults and refusals

    /// Wraps a Tallyfy endpoint: counts the request, applies a queued fault,
    /// and turns a thrown `Refusal` into its response.
    private func endpoint(_ endpoint: Endpoint, _ handler: @escaping Handler) -> Handler {
        { [state] request, context in
            var response = try await Self.answer(request, context, state: state, endpoint: endpoint, handler)
            // Every answer carries a request ID, as Tallyfy's do: it is what
            // Tallyfy Support asks for, and what the vault shows with an error.
            response.headers[.requestID] = RandomID.hex(byteCount: 8)
            return response
        }
    }

    private static func answer(_ request: Request, _ context: Context, state: EmulatorState, endpoint: Endpoint,
                               _ handler: Handler) async throws -> Response {
        // The header is Tallyfy's for its API; the token endpoint is OAuth's.
        if endpoint != .token {
            await state.record(clientHeader: clientHeader(of: request))
        }
        if let fault = await state.arrive(at: endpoint) {
            if let response = try await Self.apply(fault) { return response }
        }
        do {
            return try await handler(request, context)
        } catch let refusal as Refusal {
            return refusal.response
        }
    }

    /// The response a fault replaces the real one with; nil when the request
    /// is still to be served (a delay).
    private static func apply(_ fault: Fault) async throws -> Response? {
        var headers: HTTPFields = [:]
        if let retryAfter = fault.retryAfter {
            headers[.retryAfter] = String(retryAfter)
        }
        switch fault.kind {
        case .delay:
            // Cut short when the emulator is asked to stop, so a long delay
            // cannot hold up a graceful shutdown.
            let milliseconds = fault.delayMs ?? 1000
            let slept: Void? = try? await cancelWhenGracefulShutdown {
                try await Task.sleep(for: .milliseconds(milliseconds))
            }
            if slept == nil {
                return Reply.json(.serviceUnavailable, ["error": "shutting_down"])
            }
            return nil
        case .status:
            let code = fault.status ?? 503
            return Reply.json(HTTPResponse.Status(code: code),
                              ["error": true, "code": "EMULATED_FAILURE", "message": "Emulated failure.", "status": code],
                              headers: headers)
        case .rateLimit:
            // Tallyfy's 429: `Retry-After`, the `X-RateLimit-*` quota headers
            // and `code: RATE_LIMIT_EXCEEDED` (open-api/index.mdx).
            let wait = fault.retryAfter ?? 1
            headers[.retryAfter] = String(wait)
            headers[.rateLimitLimit] = "600"
            headers[.rateLimitRemaining] = "0"
            headers[.rateLimitReset] = String(Int(Date().timeIntervalSince1970) + wait)
            return Reply.json(.tooManyRequests, [
                "message": "You've reached the limit for API requests (600 per minute). Please try again later.",
                "code": "RATE_LIMIT_EXCEEDED",
            ], headers: headers)
        case .trickle:
            let code = fault.status ?? 503
            let interval = fault.delayMs ?? 1000
            let bytes = Array(#"{"error":true,"code":"EMULATED_FAILURE","message":"This answer is sent one byte at a time."}"#.utf8)
            headers[.contentType] = "application/json"
            let body = ResponseBody(contentLength: bytes.count) { writer in
                for byte in bytes {
                    try await writer.write(ByteBuffer(bytes: [byte]))
                    // Cut short at shutdown, like `delay`.
                    let slept: Void? = try? await cancelWhenGracefulShutdown {
                        try await Task.sleep(for: .milliseconds(interval))
                    }
                    if slept == nil { break }
                }
                try await writer.finish(nil)
            }
            return Response(status: HTTPResponse.Status(code: code), headers: headers, body: body)
        case .brokenJSON:
            return Reply.raw(HTTPResponse.Status(code: fault.status ?? 200), Data(#"{"access_token": "abc"#.utf8),
                             contentType: "application/json", headers: headers)
        case .html:
            let code = fault.status ?? 502
            let page = """
                <!DOCTYPE html>
                <html><head><title>\(code) Bad Gateway</title></head>
                <body><h1>\(code) Bad Gateway</h1><p>The upstream server did not answer (emulated).</p></body></html>

                """
            return Reply.raw(HTTPResponse.Status(code: code), Data(page.utf8),
                             contentType: "text/html; charset=utf-8", headers: headers)
        }
    }

    // MARK: POST /oauth/token

    private func issueApplicationToken(_ request: Request, _ context: Context) async throws -> Response {
        let form = try await Self.formOrJSON(request, context)
        guard form["grant_type"] == "client_credentials" else {
            return Reply.json(.badRequest, [
                "error": "unsupported_grant_type",
                "error_description": "The authorization grant type is not supported by the authorization server.",
            ])
        }
        guard let clientID = form["client_id"], !clientID.isEmpty,
              let secret = form["client_secret"], !secret.isEmpty
        else {
            return Reply.json(.badRequest, [
                "error": "invalid_request",
                "error_description": "The request is missing a required parameter: client_id or client_secret.",
            ])
        }
        guard let client = await state.authenticate(clientID: clientID, secret: secret) else {
            return Reply.json(.unauthorized, [
                "error": "invalid_client",
                "error_description": "Client authentication failed",
                "message": "Client authentication failed",
            ])
        }
        let ttl = await state.lifetimes.app
        let token = await issue(kind: .application, subject: client.id, org: client.org, clientID: client.id, ttl: ttl, now: state.now())
        return Reply.json(.ok, ["token_type": "Bearer", "expires_in": ttl, "access_token": token])
    }

    // MARK: POST /api/applications/{org}/users

    private func createUser(_ request: Request, _ context: Context) async throws -> Response {
        let org = try await authorize(request, context, applicationOnly: true).org
        let body = try await Self.jsonObject(request, context)

        var errors: [String: [String]] = [:]
        let firstName = Self.name(body, "first_name", into: &errors)
        let lastName = Self.name(body, "last_name", into: &errors)
        var email = ""
        switch body["email"] {
        case nil, is NSNull:
            errors["email"] = ["The email field is required."]
        case let value as String where Self.isValidEmail(value):
            email = value
        default:
            errors["email"] = ["The email must be a valid email address."]
        }
        var role = "standard"
        switch body["role"] {
        case nil, is NSNull:
            break
        case let value as String where ["admin", "standard", "light"].contains(value):
            role = value
        default:
            errors["role"] = ["The selected role is invalid; use admin, standard or light."]
        }
        var timezone = "UTC"
        switch body["timezone"] {
        case nil, is NSNull:
            break
        case let value as String where !value.isEmpty && TimeZone(identifier: value) != nil:
            timezone = value
        default:
            errors["timezone"] = ["The timezone must be a valid IANA zone name."]
        }
        guard errors.isEmpty else {
            return Reply.json(.unprocessableContent, ["error": true, "message": "The given data was invalid.", "errors": errors])
        }

        switch await state.createUser(org: org, email: email, firstName: firstName, lastName: lastName,
                                      role: role, timezone: timezone) {
        case .exists:
            // A validation failure of the `email` field, as Laravel's
            // `unique` rule reports it, not a 409.
            return Reply.json(.unprocessableContent, [
                "error": true, "message": "The given data was invalid.",
                "errors": ["email": ["The email has already been taken."]],
            ])
        case .created(let user):
            return Reply.json(.created, ["data": user.json])
        }
    }

    /// A required name field of 1–32 characters (after trimming blanks).
    private static func name(_ body: [String: Any], _ field: String, into errors: inout [String: [String]]) -> String {
        guard let raw = body[field], !(raw is NSNull) else {
            errors[field] = ["The \(field) field is required."]
            return ""
        }
        guard let value = raw as? String else {
            errors[field] = ["The \(field) must be a string."]
            return ""
        }
        let trimmed = value.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.isEmpty {
            errors[field] = ["The \(field) field is required."]
        } else if value.count > 32 {
            errors[field] = ["The \(field) may not be greater than 32 characters."]
        } else if looksLikeURL(trimmed) {
            errors[field] = ["The \(field) may not be a URL."]
        }
        return value
    }

    /// Names may not be URLs (tallyfy/documentation, code-samples/members/update-member.mdx:
    /// "can't be a URL or disallowed name").
    static func looksLikeURL(_ text: String) -> Bool {
        let lowered = text.lowercased()
        return lowered.contains("://") || lowered.hasPrefix("www.")
    }

    /// One `@`, a non-empty local part, a domain with a dot (not at either
    /// end), no whitespace: the checks Tallyfy's validation is known to make.
    static func isValidEmail(_ email: String) -> Bool {
        guard !email.contains(where: { $0.isWhitespace }), email.count <= 254 else { return false }
        let parts = email.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty else { return false }
        let domain = parts[1]
        return domain.contains(".") && !domain.hasPrefix(".") && !domain.hasSuffix(".") && !domain.contains("..")
    }

    // MARK: POST /api/applications/{org}/users/{email}/token

    private func issueUserToken(_ request: Request, _ context: Context) async throws -> Response {
        let claims = try await authorize(request, context, applicationOnly: true)
        let rawEmail = context.parameters.get("email") ?? ""
        let email = rawEmail.removingPercentEncoding ?? rawEmail
        guard let user = await state.user(org: claims.org, email: email) else {
            return Reply.apiError(.notFound, code: "RESOURCE_NOT_FOUND", "Resource not found")
        }
        let ttl = await state.lifetimes.user
        let token = await issue(kind: .user, subject: user.email, org: claims.org,
                                clientID: claims.client_id, ttl: ttl, now: state.now())
        return Reply.json(.ok, ["token_type": "Bearer", "expires_in": ttl, "access_token": token])
    }

    // MARK: GET /api/organizations/{org}/me

    /// For a user token, the user in Tallyfy's item envelope `{"data": {…}}`
    /// (what the Python SDK's `get_current_user_info` reads). Beside it, and
    /// alone for an application token, the emulator's own fields `kind`,
    /// `client_id`, `org`, `email`, `expires_at`, which tests use to see which
    /// token a program was handed.
    private func me(_ request: Request, _ context: Context) async throws -> Response {
        let claims = try await authorize(request, context, applicationOnly: false)
        var body: [String: Any] = [
            "kind": claims.kind.rawValue,
            "client_id": claims.client_id,
            "org": claims.org,
            "expires_at": claims.exp,
        ]
        if claims.kind == .user {
            body["email"] = claims.sub
            if let user = await state.user(org: claims.org, email: claims.sub) {
                body["data"] = user.profile
            }
        }
        return Reply.json(.ok, body)
    }

    // MARK: GET /api/organizations/{org}/users

    /// The organization's members (the users its clients provisioned), in
    /// Tallyfy's list envelope `{"data": […], "meta": {"pagination": {…}}}`,
    /// paged by `page` (from 1) and `per_page` (1–100, default 100), as the
    /// Python SDK's `get_organization_users` asks.
    private func listUsers(_ request: Request, _ context: Context) async throws -> Response {
        let org = try await authorize(request, context, applicationOnly: false).org
        let query = request.uri.queryParameters
        let page = max(1, query.get("page", as: Int.self) ?? 1)
        let perPage = min(100, max(1, query.get("per_page", as: Int.self) ?? 100))
        let users = await state.users(org: org)
        let slice = users.dropFirst((page - 1) * perPage).prefix(perPage)
        return Reply.json(.ok, [
            "data": slice.map(\.profile),
            "meta": ["pagination": [
                "total": users.count, "count": slice.count, "per_page": perPage, "current_page": page,
                "total_pages": (users.count + perPage - 1) / perPage,
            ]],
        ])
    }

    // MARK: GET /api/me/organizations

    /// The organizations of the token's user, in the list envelope (the
    /// Python SDK's `get_current_user_organizations`): the one organization
    /// the emulator knows it in. An application token acts as no user: 401,
    /// as for `GET /api/me`.
    private func myOrganizations(_ request: Request, _ context: Context) async throws -> Response {
        let claims = try await authenticate(request)
        guard claims.kind == .user else {
            return Reply.apiError(.unauthorized, code: "UNAUTHENTICATED",
                                  "This endpoint needs a user token; an application token acts as no user.")
        }
        return Reply.json(.ok, [
            "data": [["id": claims.org, "name": "Emulated organization \(claims.org)"]],
            "meta": ["pagination": ["total": 1, "count": 1, "per_page": 10, "current_page": 1, "total_pages": 1]],
        ])
    }

    // MARK: GET /api/me

    /// Who a user token belongs to, in Tallyfy's item envelope
    /// `{"data": {"id", "email", "username", "first_name", "last_name", "timezone"}}`
    /// (the fields Tallyfy's CLI reads: tallyfy/cli, pkg/tallyfy/types.go).
    /// An application token acts as no user, so it gets 401, as the real API
    /// answers user-context endpoints for client-credentials tokens
    /// (open-api/how-to-integrate-with-tallyfy-using-api.mdx).
    private func apiMe(_ request: Request, _ context: Context) async throws -> Response {
        let claims = try await authenticate(request)
        guard claims.kind == .user else {
            return Reply.apiError(.unauthorized, code: "UNAUTHENTICATED",
                                  "This endpoint needs a user token; an application token acts as no user.")
        }
        guard let user = await state.user(org: claims.org, email: claims.sub) else {
            return Reply.apiError(.unauthorized, code: "UNAUTHENTICATED", "Unauthenticated.")
        }
        var json = user.json
        json["username"] = user.email
        json["org_id"] = claims.org
        return Reply.json(.ok, ["data": json])
    }

    // MARK: Tokens and authorization

    private func issue(kind: TokenClaims.Kind, subject: String, org: String, clientID: String, ttl: Int, now: Int) async -> String {
        let claims = TokenClaims(
            iss: JWTSigner.issuer, sub: subject, kind: kind, org: org, client_id: clientID,
            iat: now, exp: now + ttl, jti: RandomID.hex())
        await state.issued(claims)
        return settings.signer.sign(claims)
    }

    /// The `X-Tallyfy-Client` value, trimmed; nil when absent or blank.
    private static func clientHeader(of request: Request) -> String? {
        guard let value = request.headers.value(named: "X-Tallyfy-Client")?.trimmingCharacters(in: .whitespaces),
              !value.isEmpty
        else { return nil }
        return value
    }

    /// The first checks of every `/api/` call: an `X-Tallyfy-Client` header
    /// (401, as Tallyfy's docs say a request without it fails), then a valid
    /// unexpired bearer token of ours (401), and with `--revoke-on-reissue`
    /// the newest one its holder was issued (401).
    ///
    /// Any non-empty value passes: Tallyfy's docs show `APIClient`, but its
    /// own Python SDK sends `TallyfySDK`, so the real API cannot insist on one.
    private func authenticate(_ request: Request) async throws -> TokenClaims {
        guard Self.clientHeader(of: request) != nil else {
            throw Refusal(response: Reply.apiError(.unauthorized, code: "MISSING_CLIENT_HEADER",
                                                   "The X-Tallyfy-Client header is required (Tallyfy's docs use X-Tallyfy-Client: APIClient)."))
        }
        let now = await state.now()
        guard let authorization = request.headers[.authorization],
              authorization.count > 7,
              authorization.prefix(7).lowercased() == "bearer ",
              let claims = settings.signer.verify(
                  authorization.dropFirst(7).trimmingCharacters(in: .whitespaces), now: now)
        else {
            var headers: HTTPFields = [:]
            headers[.wwwAuthenticate] = #"Bearer error="invalid_token""#
            throw Refusal(response: Reply.apiError(.unauthorized, code: "UNAUTHENTICATED", "Unauthenticated.", headers: headers))
        }
        if settings.revokeOnReissue, await state.isSuperseded(claims) {
            var headers: HTTPFields = [:]
            headers[.wwwAuthenticate] = #"Bearer error="invalid_token""#
            throw Refusal(response: Reply.apiError(.unauthorized, code: "TOKEN_REVOKED",
                                                   "This token was revoked: a newer one was issued to the same \(claims.kind == .user ? "user" : "client").",
                                                   headers: headers))
        }
        return claims
    }

    /// The checks every `/api/…/{org}/…` call passes, in this order:
    /// `authenticate`, then a token of that organization, which must be one
    /// this emulator serves (403 either way, with the real API's message),
    /// and for the applications endpoints an application token (403).
    private func authorize(_ request: Request, _ context: Context, applicationOnly: Bool) async throws -> TokenClaims {
        let claims = try await authenticate(request)
        let org = context.parameters.get("org") ?? ""
        guard await state.serves(org: org), claims.org == org else {
            throw Refusal(response: Reply.apiError(.forbidden, code: nil, Reply.noApplicationPermission))
        }
        if applicationOnly && claims.kind != .application {
            throw Refusal(response: Reply.apiError(.forbidden, code: nil, "This endpoint needs an application token."))
        }
        return claims
    }

    // MARK: Request bodies

    private static func body(_ request: Request, _ context: Context) async throws -> Data {
        var request = request
        do {
            let buffer = try await request.collectBody(upTo: maxBody)
            return Data(buffer.readableBytesView)
        } catch {
            throw Refusal(response: Reply.error(.contentTooLarge, "request_too_large"))
        }
    }

    /// A JSON object body; an empty body counts as `{}` so that missing
    /// fields are reported one by one.
    private static func jsonObject(_ request: Request, _ context: Context) async throws -> [String: Any] {
        let data = try await body(request, context)
        if data.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return [:] }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw Refusal(response: Reply.json(.badRequest, [
                "error": "invalid_request", "message": "The body must be a JSON object.",
            ]))
        }
        return object
    }

    /// The token request's parameters: form-encoded as OAuth specifies, or a
    /// JSON object (Laravel Passport, behind Tallyfy, accepts both).
    private static func formOrJSON(_ request: Request, _ context: Context) async throws -> [String: String] {
        let data = try await body(request, context)
        if request.headers[.contentType]?.lowercased().hasPrefix("application/json") == true {
            let object = (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
            return object.compactMapValues { $0 as? String }
        }
        return parseForm(String(decoding: data, as: UTF8.self))
    }

    /// `application/x-www-form-urlencoded`: `+` is a space, `%XX` a byte; the
    /// first occurrence of a key wins.
    static func parseForm(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let (rawKey, rawValue) = pair.firstIndex(of: "=").map { (pair[..<$0], pair[pair.index(after: $0)...]) }
                ?? (pair[...], Substring(""))
            func decode(_ s: Substring) -> String {
                let spaced = s.replacingOccurrences(of: "+", with: " ")
                return spaced.removingPercentEncoding ?? spaced
            }
            let key = decode(rawKey)
            if result[key] == nil { result[key] = decode(rawValue) }
        }
        return result
    }

    // MARK: Admin

    private func addFault(_ request: Request, _ context: Context) async throws -> Response {
        let data = try? await Self.body(request, context)
        guard let data, let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            return Reply.json(.badRequest, ["error": "the body must be a JSON object describing one fault"])
        }
        switch Fault.parse(object) {
        case .failure(let error):
            return Reply.json(.badRequest, ["error": error.message])
        case .success(let fault):
            let queued = await state.add(fault)
            return Reply.json(.ok, ["ok": true, "queued": queued])
        }
    }

    private func setClientSecrets(_ request: Request, _ context: Context) async throws -> Response {
        let rawID = context.parameters.get("id") ?? ""
        let clientID = rawID.removingPercentEncoding ?? rawID
        let data = try? await Self.body(request, context)
        guard let data, let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let secrets = object["secrets"] as? [String]
        else {
            return Reply.json(.badRequest, ["error": #"the body must be {"secrets":["…"]} (an array of strings)"#])
        }
        let org = object["org"] as? String
        if let org, !(await state.serves(org: org)) {
            return Reply.json(.badRequest, ["error": "organization \(org) is not served by this emulator"])
        }
        let client = await state.setSecrets(clientID: clientID, secrets: secrets, org: org)
        return Reply.json(.ok, ["client_id": client.id, "org": client.org, "secrets": client.secrets.count])
    }

    /// `POST /__emulator/clock` `{"advance":SECONDS}`: moves the emulator's
    /// clock forward (tokens it issued expire, as far as it is concerned).
    private func advanceClock(_ request: Request, _ context: Context) async throws -> Response {
        let data = try? await Self.body(request, context)
        guard let data, let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let seconds = object["advance"] as? Int, seconds > 0, seconds <= 100 * 365 * 86_400
        else {
            return Reply.json(.badRequest, ["error": #"the body must be {"advance":SECONDS} with SECONDS > 0"#])
        }
        return Reply.json(.ok, ["offset": await state.advanceClock(by: seconds)])
    }

    /// `PUT /__emulator/ttl` `{"app":SECONDS,"user":SECONDS}` (either may be left out).
    private func setLifetimes(_ request: Request, _ context: Context) async throws -> Response {
        let data = try? await Self.body(request, context)
        guard let data, let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            return Reply.json(.badRequest, ["error": #"the body must be {"app":SECONDS,"user":SECONDS}"#])
        }
        let app = object["app"] as? Int
        let user = object["user"] as? Int
        guard app ?? 1 > 0, user ?? 1 > 0 else {
            return Reply.json(.badRequest, ["error": "lifetimes must be positive whole seconds"])
        }
        let lifetimes = await state.setLifetimes(app: app, user: user)
        return Reply.json(.ok, ["app": lifetimes.app, "user": lifetimes.user])
    }
}

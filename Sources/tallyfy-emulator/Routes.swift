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
        router.get("/api/organizations/:org/me", use: endpoint(.me, me))

        router.get("/__emulator/counts") { _, _ in
            Reply.json(.ok, await state.countsSnapshot())
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
    }

    // MARK: Counting, faults and refusals

    /// Wraps a Tallyfy endpoint: counts the request, applies a queued fault,
    /// and turns a thrown `Refusal` into its response.
    private func endpoint(_ endpoint: Endpoint, _ handler: @escaping Handler) -> Handler {
        { [state] request, context in
            if let fault = await state.arrive(at: endpoint) {
                if let response = try await Self.apply(fault) { return response }
            }
            do {
                return try await handler(request, context)
            } catch let refusal as Refusal {
                return refusal.response
            }
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
            let slept = try? await cancelWhenGracefulShutdown {
                try await Task.sleep(for: .milliseconds(milliseconds))
            }
            if slept == nil {
                return Reply.json(.serviceUnavailable, ["error": "shutting_down"])
            }
            return nil
        case .status:
            let code = fault.status ?? 503
            return Reply.json(HTTPResponse.Status(code: code),
                              ["error": "emulated_failure", "status": code], headers: headers)
        case .rateLimit:
            headers[.retryAfter] = String(fault.retryAfter ?? 1)
            return Reply.json(.tooManyRequests,
                              ["error": "too_many_requests", "message": "Too Many Attempts."], headers: headers)
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
            ])
        }
        let ttl = await state.lifetimes.app
        let token = issue(kind: .application, subject: client.id, org: client.org, clientID: client.id, ttl: ttl)
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
            return Reply.json(.unprocessableContent, ["message": "The given data was invalid.", "errors": errors])
        }

        switch await state.createUser(org: org, email: email, firstName: firstName, lastName: lastName,
                                      role: role, timezone: timezone) {
        case .exists:
            return Reply.json(.conflict, ["error": "user_exists",
                                          "message": "A user with this email already exists in this organization."])
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
        }
        return value
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
            return Reply.json(.notFound, ["error": "user_not_found",
                                          "message": "No user with this email in this organization."])
        }
        let ttl = await state.lifetimes.user
        let token = issue(kind: .user, subject: user.email, org: claims.org,
                          clientID: claims.client_id, ttl: ttl)
        return Reply.json(.ok, ["token_type": "Bearer", "expires_in": ttl, "access_token": token])
    }

    // MARK: GET /api/organizations/{org}/me

    private func me(_ request: Request, _ context: Context) async throws -> Response {
        let claims = try await authorize(request, context, applicationOnly: false)
        var body: [String: Any] = [
            "kind": claims.kind.rawValue,
            "client_id": claims.client_id,
            "org": claims.org,
            "expires_at": claims.exp,
        ]
        if claims.kind == .user { body["email"] = claims.sub }
        return Reply.json(.ok, body)
    }

    // MARK: Tokens and authorization

    private func issue(kind: TokenClaims.Kind, subject: String, org: String, clientID: String, ttl: Int) -> String {
        let now = Int(Date().timeIntervalSince1970)
        return settings.signer.sign(TokenClaims(
            iss: JWTSigner.issuer, sub: subject, kind: kind, org: org, client_id: clientID,
            iat: now, exp: now + ttl, jti: RandomID.hex()))
    }

    /// The checks every `/api/` call passes, in this order: the
    /// `X-Tallyfy-Client: APIClient` header (400), a valid unexpired bearer
    /// token of ours (401), an organization this emulator serves (404), a
    /// token of that organization (403), and for the applications endpoints an
    /// application token (403).
    private func authorize(_ request: Request, _ context: Context, applicationOnly: Bool) async throws -> TokenClaims {
        guard request.headers.value(named: "X-Tallyfy-Client")?.trimmingCharacters(in: .whitespaces) == "APIClient" else {
            throw Refusal(response: Reply.error(.badRequest, "missing X-Tallyfy-Client header"))
        }
        let now = Int(Date().timeIntervalSince1970)
        guard let authorization = request.headers[.authorization],
              authorization.count > 7,
              authorization.prefix(7).lowercased() == "bearer ",
              let claims = settings.signer.verify(
                  authorization.dropFirst(7).trimmingCharacters(in: .whitespaces), now: now)
        else {
            var headers: HTTPFields = [:]
            headers[.wwwAuthenticate] = #"Bearer error="invalid_token""#
            throw Refusal(response: Reply.json(.unauthorized, ["error": "invalid_token"], headers: headers))
        }
        let org = context.parameters.get("org") ?? ""
        guard await state.serves(org: org) else {
            throw Refusal(response: Reply.json(.notFound, ["error": "organization_not_found"]))
        }
        guard claims.org == org else {
            throw Refusal(response: Reply.json(.forbidden, [
                "error": "forbidden", "message": "This token belongs to another organization.",
            ]))
        }
        if applicationOnly && claims.kind != .application {
            throw Refusal(response: Reply.json(.forbidden, [
                "error": "forbidden", "message": "This endpoint needs an application token.",
            ]))
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

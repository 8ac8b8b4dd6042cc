import AsyncHTTPClient
import Foundation
import TallyfyVaultCore
import NIOCore

extension TallyfyClient {
    // MARK: - Users

    /// Provisions `user` in organization `orgID` with the application token:
    /// `POST {apiURL}/applications/{org}/users` with a JSON body.
    ///
    /// The user is validated first, so nothing is sent for a typo. Creating
    /// a user is not idempotent, so only failures that prove the request was
    /// not acted on are retried: connection failures before sending, 429 and
    /// 503. Errors: `.usage` (64) for 409 (the user exists) and 422 (with
    /// Tallyfy's per-field messages), `.refused` (77) for 401/403,
    /// `.configuration` (78) for an unknown organization, `.tryLater` (75),
    /// `.unavailable` (69) as for the token request.
    package func createUser(apiURL: URL, orgID: String, applicationToken: String, user: NewUser) async throws {
        try user.validate()
        let url = try Self.apiURL(apiURL, orgID: orgID, path: ["users"])
        let endpoint = Endpoint(
            what: "the user creation request", url: url, afterSendRetryIsSafe: false,
            retryableStatus: { $0 == 429 || $0 == 503 }, sensitive: [applicationToken]
        )
        var request = try Self.apiRequest(url, applicationToken: applicationToken)
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: try NewUserBody(user: user).jsonData()))

        let reply = try await send(request, to: endpoint)
        if reply.isSuccess { return }
        let requestID = ServerDetail(reply, redacting: endpoint.sensitive).requestSuffix
        let existsHint = "issue a token for the existing user with `tallyfy-vault users token \(user.email)`"
        switch reply.status {
        case 409:
            throw VaultError(
                .usage, "a user with this email already exists in organization \(orgID) (\(NewUser.quoted(user.email)))" + requestID,
                hint: existsHint
            )
        case 422:
            // Tallyfy answers validation failures, a taken email included,
            // as `{"error": true, "errors": {"email": ["The email has already been taken."]}}`.
            if Self.saysEmailIsTaken(reply.body) {
                throw VaultError(
                    .usage, "a user with this email already exists in organization \(orgID) (\(NewUser.quoted(user.email)))" + requestID,
                    hint: existsHint
                )
            }
            if let fields = fieldErrors(in: reply.body) {
                throw VaultError(.usage, "Tallyfy rejected the user: \(fields)" + requestID,
                                 hint: "correct the fields named and run `tallyfy-vault users create` again")
            }
            throw VaultError(.usage, "Tallyfy rejected the user's details (\(reply.statusText))"
                                 + ServerDetail(reply, redacting: endpoint.sensitive).suffix,
                             hint: "check the email, names, role and timezone")
        default:
            throw apiError(reply, endpoint: endpoint, orgID: orgID, email: nil)
        }
    }

    /// Issues a token that acts as the user `email`:
    /// `POST {apiURL}/applications/{org}/users/{email}/token`, no body.
    ///
    /// Safe to repeat (it only mints another token), so timeouts and dropped
    /// connections are retried as well. Errors: `.usage` (64) when there is
    /// no such user, otherwise as for `createUser`.
    package func userToken(apiURL: URL, orgID: String, applicationToken: String, email: String, now: Date) async throws -> IssuedToken {
        try NewUser.validateEmail(email)
        let url = try Self.apiURL(apiURL, orgID: orgID, path: ["users", email, "token"])
        let endpoint = Endpoint(
            what: "the user token request", url: url, afterSendRetryIsSafe: true,
            retryableStatus: RetryPolicy.isRetryable(status:), sensitive: [applicationToken]
        )
        var request = try Self.apiRequest(url, applicationToken: applicationToken)
        // An explicit empty body, so the request carries `Content-Length: 0`
        // (some proxies refuse a POST without one).
        request.body = .bytes(ByteBuffer())

        let reply = try await send(request, to: endpoint)
        if reply.isSuccess {
            return try token(from: reply, endpoint: endpoint, receivedAt: now)
        }
        throw apiError(reply, endpoint: endpoint, orgID: orgID, email: email)
    }

    // MARK: - Shared by the API calls

    /// `{apiURL}/applications/{org}/{path…}`, each segment percent-encoded on
    /// its own, whether or not `apiURL` ends with a slash.
    static func apiURL(_ apiURL: URL, orgID: String, path: [String]) throws -> URL {
        let base = try EndpointURL.validate(apiURL.absoluteString, name: "API URL")
        guard !orgID.isEmpty else {
            throw VaultError(.usage, "the organization ID is empty", hint: "set it with `tallyfy-vault credentials set --org ORG_ID`")
        }
        var text = base.absoluteString
        while text.hasSuffix("/") { text.removeLast() }
        text += "/applications/" + pathSegment(orgID)
        for segment in path { text += "/" + pathSegment(segment, keepAt: true) }
        guard let url = URL(string: text) else {
            throw VaultError(.usage, "could not build a request URL from the API URL", hint: "check it with `tallyfy-vault credentials show`")
        }
        return url
    }

    /// Percent-encodes everything outside RFC 3986's unreserved characters
    /// (and `@` when `keepAt`, as Tallyfy's own examples put emails raw), so
    /// a value can never add a path segment, a query or a fragment.
    static func pathSegment(_ value: String, keepAt: Bool = false) -> String {
        var out = ""
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: "@") where keepAt:
                out.append("@")
            default:
                out.append(percentEscape(byte))
            }
        }
        // "." and ".." as whole segments would be resolved away by URL handling.
        if out == "." { return "%2E" }
        if out == ".." { return "%2E%2E" }
        return out
    }

    /// A POST with the headers every Tallyfy API call carries.
    static func apiRequest(_ url: URL, applicationToken: String) throws -> HTTPClientRequest {
        guard TokenResponse.isPlausibleToken(applicationToken) else {
            throw VaultError(
                .configuration, "the sealed application token cannot be sent (it is empty or has invalid characters)",
                hint: "get a new one with `tallyfy-vault login`"
            )
        }
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(applicationToken)")
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "X-Tallyfy-Client", value: "APIClient")
        request.headers.add(name: "User-Agent", value: userAgent)
        return request
    }

    /// Whether a 422 names the email as already taken (Laravel's `unique` rule).
    static func saysEmailIsTaken(_ body: Data) -> Bool {
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
              let errors = object["errors"] as? [String: Any], let email = errors["email"]
        else { return false }
        let texts = (email as? [Any])?.compactMap { $0 as? String } ?? [(email as? String) ?? ""]
        return texts.contains { $0.lowercased().contains("taken") || $0.lowercased().contains("exists") }
    }

    /// Maps a non-2xx answer of an API call that no endpoint-specific rule
    /// covered. Both Tallyfy's shape (`{"error": true, "code": …, "message": …}`)
    /// and the emulator's older one (`{"error": "organization_not_found"}`)
    /// are understood; the server's message and request ID are shown.
    func apiError(_ reply: Reply, endpoint: Endpoint, orgID: String, email: String?) -> VaultError {
        let detail = ServerDetail(reply, redacting: endpoint.sensitive)
        let code = detail.code
        switch reply.status {
        case 401:
            return VaultError(
                .refused, "the application token was rejected by Tallyfy (\(reply.statusText))" + detail.suffix,
                hint: "get a new one with `tallyfy-vault login`; if that keeps failing, check the client credentials",
                cause: .tallyfyRejectedApplicationToken
            )
        case 403:
            // The real API answers an organization the client does not belong
            // to (or that does not exist) with 403 "You don't have
            // application's permissions for this organization!".
            return VaultError(
                .refused, "Tallyfy refused \(endpoint.what) for organization \(orgID) (\(reply.statusText))" + detail.suffix,
                hint: "check that the profile's organization ID (32 hexadecimal characters) "
                    + "is the one Tallyfy Support issued the client for (`tallyfy-vault credentials show`), "
                    + "and that the application may manage users"
            )
        case 404 where code == "ENDPOINT_NOT_FOUND":
            return VaultError(
                .configuration, "the API URL does not lead to Tallyfy's applications API (\(reply.statusText) to \(endpoint.what) at \(endpoint.hostPort))" + detail.suffix,
                hint: "check the profile's API URL (default \(TallyfyVaultCore.Credentials.defaultAPIURL)) with `tallyfy-vault credentials show`"
            )
        case 404 where code == "organization_not_found" || email == nil:
            return VaultError(
                .configuration, "Tallyfy does not know organization \(orgID) at \(endpoint.hostPort) (\(reply.statusText))" + detail.suffix,
                hint: "check the profile's organization ID and API URL with `tallyfy-vault credentials show`"
            )
        case 404:
            let shown = email.map { NewUser.quoted($0) } ?? "?"
            return VaultError(
                .usage, "no user \(shown) in organization \(orgID)" + detail.requestSuffix,
                hint: "create it first with `tallyfy-vault users create --email EMAIL --first-name F --last-name L`"
            )
        case 400, 422:
            if let fields = fieldErrors(in: reply.body) {
                return VaultError(.usage, "Tallyfy rejected \(endpoint.what): \(fields)" + detail.requestSuffix,
                                  hint: "check the email address and the profile's organization ID")
            }
            return VaultError(
                .usage, "Tallyfy rejected \(endpoint.what) (\(reply.statusText)\(code.map { ", \($0)" } ?? ""))" + detail.suffix,
                hint: "check the email address and the profile's organization ID"
            )
        case 409:
            return VaultError(.usage, "Tallyfy refused \(endpoint.what) because of a conflict (\(reply.statusText))" + detail.suffix)
        default:
            return unexpectedStatus(reply, endpoint: endpoint)
        }
    }
}

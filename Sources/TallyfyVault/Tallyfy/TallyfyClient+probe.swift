import AsyncHTTPClient
import Foundation
import NIOCore
import TallyfyVaultCore

/// What a token URL turned out to be when asked without credentials.
package enum TokenEndpointProbe: Sendable, Equatable {
    /// It answered an unauthenticated token request with an OAuth error
    /// (`invalid_request`, `invalid_client`): a token endpoint.
    case tokenEndpoint(status: UInt, code: String)
    /// It answered, but not as a token endpoint: 404, 405, a redirect, a page.
    case notTokenEndpoint(status: UInt)
    /// It answered 5xx or 429: there, but not answering now.
    case troubled(status: UInt)
    /// No answer: the reason (connection refused, TLS failure, timeout).
    case unreachable(String)
}

/// Who a token acts as, from `GET {api}/me`.
package enum MeAnswer: Sendable, Equatable {
    /// 200: the user's email (or `?` when the body does not say).
    case user(email: String)
    /// Any other status, with Tallyfy's message and request ID when sent.
    case refused(status: UInt, detail: String)
}

extension TallyfyClient {
    /// Asks `url` for a token with `grant_type=client_credentials` and no
    /// client at all, so no secret leaves this machine. A Laravel Passport
    /// token endpoint, like Tallyfy's, answers that with an OAuth error; a
    /// wrong URL answers 404, 405 or a redirect. Used by `doctor`.
    package func probeTokenEndpoint(_ url: URL) async -> TokenEndpointProbe {
        let endpoint = Endpoint(what: "the token endpoint probe", url: url, afterSendRetryIsSafe: true,
                                retryableStatus: { _ in false })
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: Self.userAgent)
        request.body = .bytes(ByteBuffer(string: FormEncoding.encode([("grant_type", "client_credentials")])))
        do {
            _ = try EndpointURL.validate(url.absoluteString, name: "token URL")
            let reply = try await send(request, to: endpoint)
            if let code = errorCode(in: reply.body), (400...401).contains(reply.status) {
                return .tokenEndpoint(status: reply.status, code: code)
            }
            if reply.status == 429 || (500...599).contains(reply.status) { return .troubled(status: reply.status) }
            return .notTokenEndpoint(status: reply.status)
        } catch let error as VaultError {
            return .unreachable(error.message)
        } catch {
            return .unreachable("unexpected error")
        }
    }

    /// `GET {apiURL}/me` with `token`, as Tallyfy's CLI checks a token
    /// (tallyfy/cli, internal/auth/validate.go). It answers for user tokens;
    /// an application token acts as no user.
    package func me(apiURL: URL, token: String) async throws -> MeAnswer {
        let base = try EndpointURL.validate(apiURL.absoluteString, name: "API URL")
        var text = base.absoluteString
        while text.hasSuffix("/") { text.removeLast() }
        guard let url = URL(string: text + "/me") else {
            throw VaultError(.usage, "could not build the /me URL from the API URL", hint: "check it with `tallyfy-vault credentials show`")
        }
        let endpoint = Endpoint(what: "the /me request", url: url, afterSendRetryIsSafe: true,
                                retryableStatus: RetryPolicy.isRetryable(status:), sensitive: [token])
        var request = try Self.apiRequest(url, applicationToken: token)
        request.method = .GET
        let reply = try await send(request, to: endpoint)
        guard reply.isSuccess else {
            return .refused(status: reply.status, detail: reply.statusText + ServerDetail(reply, redacting: [token]).suffix)
        }
        let object = (try? JSONSerialization.jsonObject(with: reply.body)) as? [String: Any]
        let data = (object?["data"] as? [String: Any]) ?? object
        let email = (data?["email"] as? String).map(NewUser.quoted) ?? "?"
        return .user(email: email)
    }
}

extension TallyfyClient {
    /// The value of `credentials set --token-url` that asks for discovery.
    package static let discoverTokenURL = "discover"

    /// The URLs `--token-url discover` tries, in order: the ones Tallyfy
    /// documents (all https, all on Tallyfy's hosts). Debug builds let
    /// `TALLYFY_VAULT_TEST_TOKEN_URLS` (comma-separated) replace them, so
    /// tests can point the search at the emulator.
    package static func discoveryCandidates(environment: [String: String]) -> [String] {
        #if TALLYFY_TEST_HOOKS
            if let list = environment["TALLYFY_VAULT_TEST_TOKEN_URLS"], !list.isEmpty {
                return list.split(separator: ",").map(String.init)
            }
        #endif
        return documentedTokenURLs
    }

    /// Probes `candidates` in order without any credentials (see
    /// `probeTokenEndpoint`) and returns the first that answers as an OAuth
    /// token endpoint. Nothing secret is sent to any of them, which is why
    /// the vault may try several: the secret goes later, to the one found.
    /// Throws `.unavailable` (69), listing what each answered, when none does.
    /// `discoverTokenURL(candidates:)` with a client of its own: one try per
    /// candidate, 10 s in all, shut down afterwards (`credentials set
    /// --token-url discover`).
    package static func discoverTokenURL(environment: [String: String]) async throws -> String {
        let client = TallyfyClient(requestTimeout: .seconds(10), retry: .none, totalTimeout: .seconds(10))
        let found: Result<String, Error>
        do {
            found = .success(try await client.discoverTokenURL(candidates: discoveryCandidates(environment: environment)))
        } catch {
            found = .failure(error)
        }
        await client.shutdown()
        return try found.get()
    }

    package func discoverTokenURL(candidates: [String]) async throws -> String {
        var answers: [String] = []
        for candidate in candidates {
            guard let url = URL(string: candidate) else { continue }
            let probe = await probeTokenEndpoint(url)
            switch probe {
            case .tokenEndpoint:
                return candidate
            case .notTokenEndpoint(let status), .troubled(let status):
                answers.append("\(candidate) answered \(Reply.statusText(status))")
            case .unreachable(let reason):
                answers.append("\(candidate): \(reason)")
            }
        }
        throw VaultError(
            .unavailable, "none of Tallyfy's documented token URLs answered as a token endpoint: " + answers.joined(separator: "; "),
            hint: "check the network; or give the URL Tallyfy Support named with `--token-url URL`")
    }
}

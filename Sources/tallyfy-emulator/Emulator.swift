import Foundation

/// The endpoints the emulator counts and can inject faults into, named as
/// in `GET /__emulator/counts` and the `endpoint` field of a fault.
enum Endpoint: String, CaseIterable, Sendable {
    case token
    case usersCreate = "users.create"
    case usersToken = "users.token"
    case usersList = "users.list"
    case me

    /// The names a fault may give, for messages: every endpoint, then `*`.
    static var faultNames: String { (allCases.map(\.rawValue) + ["*"]).joined(separator: ", ") }
}

/// An accepted OAuth client: its organization and every secret currently
/// accepted (two during a rotation).
struct Client: Sendable {
    var id: String
    var org: String
    var secrets: [String]
}

/// A provisioned user of one organization.
struct User: Sendable {
    var id: String
    var email: String
    var firstName: String
    var lastName: String
    var role: String
    var timezone: String

    var json: [String: Any] {
        ["id": id, "email": email, "first_name": firstName, "last_name": lastName,
         "role": role, "timezone": timezone]
    }

    /// The member as the read endpoints show one (`GET …/me`, `GET …/users`):
    /// `json` plus the `username` and `full_name` that Tallyfy's CLI and
    /// Python SDK read (tallyfy/cli pkg/tallyfy/types.go; the SDK's `User` model).
    var profile: [String: Any] {
        var profile = json
        profile["username"] = email
        profile["full_name"] = "\(firstName) \(lastName)"
        return profile
    }
}

/// A failure queued through `POST /__emulator/faults`.
struct Fault: Sendable, Equatable {
    enum Kind: String, Sendable {
        /// Answer `status` with a JSON error body.
        case status
        /// Answer 429 with a `Retry-After` header.
        case rateLimit = "rate-limit"
        /// Sleep `delayMs`, then serve the request normally.
        case delay
        /// Answer 200 with a truncated JSON body.
        case brokenJSON = "broken-json"
        /// Answer 502 (or `status`) with an HTML error page, as a proxy would.
        case html
        /// Answer `status` (default 503) at once, then send the JSON body one
        /// byte every `delayMs` (default 1000): a server that holds a
        /// client which only times out waiting for the response head.
        case trickle
    }

    /// An endpoint name, or nil for "*" (every endpoint).
    var endpoint: Endpoint?
    var kind: Kind
    var status: Int?
    var retryAfter: Int?
    var delayMs: Int?
    /// How many more requests it applies to; nil = until cleared.
    var remaining: Int?

    func applies(to endpoint: Endpoint) -> Bool {
        self.endpoint == nil || self.endpoint == endpoint
    }

    /// Parses the admin JSON `{"endpoint":…,"kind":…,"status":…,"retryAfter":…,"delayMs":…,"times":…}`.
    /// Returns a message for the admin caller when the JSON is not a valid fault.
    static func parse(_ object: [String: Any]) -> Result<Fault, FaultError> {
        let endpointName = object["endpoint"] as? String ?? "*"
        let endpoint: Endpoint?
        if endpointName == "*" {
            endpoint = nil
        } else if let known = Endpoint(rawValue: endpointName) {
            endpoint = known
        } else {
            return .failure(FaultError("unknown endpoint \"\(endpointName)\"; use one of \(Endpoint.faultNames)"))
        }
        guard let kindName = object["kind"] as? String else {
            return .failure(FaultError("missing \"kind\"; use one of status, rate-limit, delay, broken-json, html, trickle"))
        }
        guard let kind = Kind(rawValue: kindName) else {
            return .failure(FaultError("unknown kind \"\(kindName)\"; use one of status, rate-limit, delay, broken-json, html, trickle"))
        }
        func integer(_ key: String) throws(FaultError) -> Int? {
            guard let value = object[key], !(value is NSNull) else { return nil }
            guard let number = value as? Int else { throw FaultError("\"\(key)\" must be an integer") }
            return number
        }
        var fault = Fault(endpoint: endpoint, kind: kind)
        do throws(FaultError) {
            fault.status = try integer("status")
            fault.retryAfter = try integer("retryAfter")
            fault.delayMs = try integer("delayMs")
            fault.remaining = try integer("times")
        } catch {
            return .failure(error)
        }
        if let status = fault.status, !(100...599).contains(status) {
            return .failure(FaultError("\"status\" must be between 100 and 599"))
        }
        if let times = fault.remaining, times < 1 {
            return .failure(FaultError("\"times\" must be at least 1 (omit it for every request)"))
        }
        if let delay = fault.delayMs, delay < 0 {
            return .failure(FaultError("\"delayMs\" must not be negative"))
        }
        if let retryAfter = fault.retryAfter, retryAfter < 0 {
            return .failure(FaultError("\"retryAfter\" must not be negative"))
        }
        return .success(fault)
    }
}

struct FaultError: Error, Sendable {
    var message: String
    init(_ message: String) { self.message = message }
}

/// Fixed settings of one emulator run, shared by every request.
struct EmulatorSettings: Sendable {
    var signer: JWTSigner
    /// `--revoke-on-reissue`: a new token revokes the earlier ones of the same
    /// client (application tokens) or user (user tokens).
    var revokeOnReissue = false
}

/// One issued token as `GET /__emulator/issued` lists it: its claims and
/// the real time it was issued (Unix seconds with fractions), which tells
/// token requests one second apart from each other.
struct IssuedToken: Sendable, Codable {
    var jti: String
    var kind: String
    var holder: String
    var iat: Int
    var exp: Int
    var issuedAt: Double
}

/// Token lifetimes in seconds; `PUT /__emulator/ttl` changes them at run time,
/// so a test can seal a short-lived token and then have the refresh get a long one.
struct TokenLifetimes: Sendable, Codable {
    var app: Int
    var user: Int
}

/// Everything that changes while the emulator runs: clients, users, request
/// counts and queued faults.
///
/// An actor, because tests fire dozens of concurrent requests (50 `tallyfy-vault`
/// processes at once) and the counts must add up exactly.
actor EmulatorState {
    /// The organizations served, in the order given (the first is the default
    /// organization of a client given without one).
    let orgs: [String]
    private var clients: [String: Client]
    /// org → lowercased email → user.
    private var users: [String: [String: User]] = [:]
    private var counts: [Endpoint: Int] = [:]
    private var faults: [Fault] = []
    private(set) var lifetimes: TokenLifetimes
    /// `X-Tallyfy-Client` value → how many `/api/` requests carried it.
    private var clientHeaders: [String: Int] = [:]
    private var withoutClientHeader = 0
    /// Who a token is for (`TokenClaims.holder`) → the `jti` of the newest
    /// token issued to them, for `--revoke-on-reissue`.
    private var newestToken: [String: String] = [:]
    /// Every token issued, in order, for `GET /__emulator/issued`: the record
    /// a history checker (tools/partition-test) reads to know which tokens
    /// existed and, with `--revoke-on-reissue`, when each was revoked.
    private var issuedLog: [IssuedToken] = []

    init(orgs: [String], clients: [Client], lifetimes: TokenLifetimes) {
        self.orgs = orgs
        self.lifetimes = lifetimes
        var byID: [String: Client] = [:]
        for client in clients {
            // Two entries with one ID add up: both secrets are accepted.
            byID[client.id, default: Client(id: client.id, org: client.org, secrets: [])]
                .secrets.append(contentsOf: client.secrets)
        }
        self.clients = byID
    }

    func serves(org: String) -> Bool { orgs.contains(org) }

    /// Records that a request reached `endpoint` and takes the fault that
    /// applies to it, if any: the first queued fault for that endpoint (or
    /// "*"), which is used up after its `times`.
    func arrive(at endpoint: Endpoint) -> Fault? {
        counts[endpoint, default: 0] += 1
        guard let index = faults.firstIndex(where: { $0.applies(to: endpoint) }) else { return nil }
        let fault = faults[index]
        if let remaining = fault.remaining {
            if remaining <= 1 {
                faults.remove(at: index)
            } else {
                faults[index].remaining = remaining - 1
            }
        }
        return fault
    }

    /// The client when `secret` is one of its accepted secrets. Every secret
    /// is compared (in constant time), so timing does not tell which matched.
    func authenticate(clientID: String, secret: String) -> Client? {
        guard let client = clients[clientID] else {
            // Spend the same work as for a known client with one secret.
            _ = ConstantTime.equal(secret, "")
            return nil
        }
        var matched = false
        for accepted in client.secrets where ConstantTime.equal(secret, accepted) {
            matched = true
        }
        return matched ? client : nil
    }

    enum CreateOutcome: Sendable {
        case created(User)
        case exists
    }

    /// Adds a user unless the email (case-insensitively) is taken in `org`.
    func createUser(org: String, email: String, firstName: String, lastName: String,
                    role: String, timezone: String) -> CreateOutcome {
        let key = email.lowercased()
        if users[org]?[key] != nil { return .exists }
        let user = User(id: RandomID.hex(byteCount: 8), email: email, firstName: firstName,
                        lastName: lastName, role: role, timezone: timezone)
        users[org, default: [:]][key] = user
        return .created(user)
    }

    func user(org: String, email: String) -> User? {
        users[org]?[email.lowercased()]
    }

    /// Every user of `org`, by email (a stable order for paging).
    func users(org: String) -> [User] {
        (users[org] ?? [:]).sorted { $0.key < $1.key }.map(\.value)
    }

    /// Records the `X-Tallyfy-Client` value of one `/api/` request (nil or
    /// blank: none), for `GET /__emulator/requests`.
    func record(clientHeader value: String?) {
        if let value, !value.isEmpty {
            clientHeaders[value, default: 0] += 1
        } else {
            withoutClientHeader += 1
        }
    }

    /// Each `X-Tallyfy-Client` value with its count, and the count of requests without one.
    func requestsSnapshot() -> (clientHeaders: [String: Int], withoutClientHeader: Int) {
        (clientHeaders, withoutClientHeader)
    }

    /// Remembers `claims` as the newest token of its holder.
    func issued(_ claims: TokenClaims) {
        newestToken[claims.holder] = claims.jti
        issuedLog.append(IssuedToken(jti: claims.jti, kind: claims.kind.rawValue, holder: claims.holder,
                                     iat: claims.iat, exp: claims.exp, issuedAt: Date().timeIntervalSince1970))
    }

    /// Every token issued since start (never the token itself: its `jti` names it).
    func issuedSnapshot() -> [IssuedToken] { issuedLog }

    /// Whether a newer token than `claims` was issued to the same holder.
    func isSuperseded(_ claims: TokenClaims) -> Bool {
        newestToken[claims.holder].map { $0 != claims.jti } ?? false
    }

    /// Every endpoint with its count, zeros included.
    func countsSnapshot() -> [String: Int] {
        Dictionary(uniqueKeysWithValues: Endpoint.allCases.map { ($0.rawValue, counts[$0, default: 0]) })
    }

    func reset() {
        counts = [:]
        faults = []
        clientHeaders = [:]
        withoutClientHeader = 0
    }

    /// Queues a fault; returns how many are queued now.
    func add(_ fault: Fault) -> Int {
        faults.append(fault)
        return faults.count
    }

    func clearFaults() { faults = [] }

    /// Seconds added to the real clock (`POST /__emulator/clock`), so tests
    /// age tokens by moving time instead of waiting for it.
    private(set) var clockOffset = 0

    /// Replaces the accepted secrets of a client, creating it (in `org`, or
    /// the first organization) when it is new.
    func setSecrets(clientID: String, secrets: [String], org: String?) -> Client {
        var client = clients[clientID] ?? Client(id: clientID, org: org ?? orgs[0], secrets: [])
        client.secrets = secrets
        if let org { client.org = org }
        clients[clientID] = client
        return client
    }
}

extension EmulatorState {
    /// The emulator's time, Unix seconds: the real clock plus the offset.
    func now() -> Int { Int(Date().timeIntervalSince1970) + clockOffset }

    func advanceClock(by seconds: Int) -> Int {
        clockOffset += seconds
        return clockOffset
    }

    func setLifetimes(app: Int?, user: Int?) -> TokenLifetimes {
        if let app { lifetimes.app = app }
        if let user { lifetimes.user = user }
        return lifetimes
    }
}

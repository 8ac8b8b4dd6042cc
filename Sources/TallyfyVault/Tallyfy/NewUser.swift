// Here, not in TallyfyVaultCore: it is the HTTP wire format of one Tallyfy
// call, and its time-zone check needs ICU (full Foundation's TimeZone), which
// the core's FoundationEssentials lacks.
import Foundation
import TallyfyVaultCore

/// The role a provisioned user gets in the organization, as Tallyfy names it.
package enum UserRole: String, Sendable, CaseIterable {
    case admin, standard, light
}

/// A user to provision with `TallyfyClient.createUser`.
///
/// Validated locally before anything is sent, with the same limits Tallyfy
/// applies, so a typo costs no round trip, no rate-limit budget and no
/// half-understood 422: the message names every bad field at once.
package struct NewUser: Sendable, Equatable {
    package var email: String
    package var firstName: String
    package var lastName: String
    /// `nil` lets Tallyfy pick its default role.
    package var role: UserRole?
    /// An IANA time zone name such as `Europe/London`; `nil` lets Tallyfy pick.
    package var timezone: String?

    /// The longest first or last name Tallyfy accepts, in characters.
    package static let maxNameLength = 32

    package init(email: String, firstName: String, lastName: String, role: UserRole? = nil, timezone: String? = nil) {
        self.email = email
        self.firstName = firstName
        self.lastName = lastName
        self.role = role
        self.timezone = timezone
    }

    /// Throws `VaultError(.usage, …)` naming every invalid field: names must
    /// be 1–32 characters (not blank, no control characters), the email must
    /// look like an address (one `@`, a non-empty local part, a dotted domain,
    /// no whitespace), and the time zone must be a known IANA name.
    package func validate() throws {
        var problems: [String] = []
        if let problem = Self.nameProblem(firstName, field: "first name") { problems.append(problem) }
        if let problem = Self.nameProblem(lastName, field: "last name") { problems.append(problem) }
        if !Self.isValidEmail(email) {
            problems.append("email \(Self.quoted(email)) is not a valid address")
        }
        if let timezone, !Self.isKnownTimeZone(timezone) {
            problems.append("timezone \(Self.quoted(timezone)) is not a known IANA time zone")
        }
        guard !problems.isEmpty else { return }
        throw VaultError(
            .usage,
            "invalid user: " + problems.joined(separator: "; "),
            hint: "names are 1–\(Self.maxNameLength) characters, the email looks like name@example.com, "
                + "the timezone is an IANA name such as Europe/London"
        )
    }

    /// Counts Unicode scalars, as the server's `max:32` rule does, so a name
    /// we accept is never rejected there.
    static func nameProblem(_ name: String, field: String) -> String? {
        if name.trimmedWhitespace.isEmpty {
            return "\(field) is empty"
        }
        if name.unicodeScalars.contains(where: \.isControl) {
            return "\(field) contains control characters"
        }
        let length = name.unicodeScalars.count
        if length > maxNameLength {
            return "\(field) is \(length) characters long (at most \(maxNameLength))"
        }
        // Tallyfy refuses names that are URLs (tallyfy/documentation,
        // code-samples/members/update-member.mdx: "can't be a URL or
        // disallowed name"); its list of disallowed names is not published,
        // so only the URL rule is checked here.
        let lowered = name.lowercased()
        if lowered.contains("://") || lowered.hasPrefix("www.") {
            return "\(field) looks like a URL, which Tallyfy does not accept as a name"
        }
        return nil
    }

    /// One `@`, a non-empty local part, a domain of non-empty dot-separated
    /// labels (at least two), no whitespace or control characters, at most
    /// 254 characters. Deliberately not a full RFC 5322 parser: it catches
    /// typos, and Tallyfy has the final word.
    static func isValidEmail(_ email: String) -> Bool {
        guard email.utf8.count <= 254,
              !email.unicodeScalars.contains(where: {
                  $0.isWhitespaceOrNewline || $0.isControl
              })
        else { return false }
        let parts = email.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return false }
        let local = parts[0], domain = parts[1]
        guard !local.isEmpty, domain.contains(".") else { return false }
        let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
        return labels.count >= 2 && labels.allSatisfy { !$0.isEmpty }
    }

    static func isKnownTimeZone(_ name: String) -> Bool {
        !name.isEmpty && TimeZone(identifier: name) != nil
    }

    /// Quotes a value the user typed for a message, cut short and with
    /// control characters escaped so it cannot garble the terminal.
    package static func quoted(_ value: String) -> String {
        var shown = value.unicodeScalars.map { scalar -> String in
            scalar.isControl ? scalar.escaped(asASCII: true) : String(scalar)
        }.joined()
        if shown.count > 80 { shown = String(shown.prefix(77)) + "…" }
        return "\"\(shown)\""
    }
}

/// The JSON body of `POST {api}/applications/{org}/users`, in Tallyfy's
/// field names; optional fields are left out rather than sent as null.
package struct NewUserBody: Encodable {
    package let user: NewUser

    package init(user: NewUser) {
        self.user = user
    }

    enum CodingKeys: String, CodingKey {
        case firstName = "first_name", lastName = "last_name", email, role, timezone
    }

    package func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(user.firstName, forKey: .firstName)
        try container.encode(user.lastName, forKey: .lastName)
        try container.encode(user.email, forKey: .email)
        try container.encodeIfPresent(user.role?.rawValue, forKey: .role)
        try container.encodeIfPresent(user.timezone, forKey: .timezone)
    }

    package func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }
}

extension NewUser {
    /// Throws `VaultError(.usage, …)` unless `email` looks like an address,
    /// by the same rule as `validate()`; for commands that take only an email
    /// (`users token EMAIL`), so a typo fails before any request.
    package static func validateEmail(_ email: String) throws {
        guard isValidEmail(email) else {
            throw VaultError(
                .usage,
                "email \(quoted(email)) is not a valid address",
                hint: "give the user's email address, such as name@example.com"
            )
        }
    }
}

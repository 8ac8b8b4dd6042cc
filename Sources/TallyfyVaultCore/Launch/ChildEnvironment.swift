#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// A token ready to hand to a child, with what the child needs beside it.
public struct TokenGrant: Sendable, Equatable {
    public var profile: String
    public var orgID: String
    public var apiURL: String
    public var token: String
    public var expiresAt: Date
    /// The user the token acts as, or `nil` for the application token.
    public var user: String?
    /// Set when renewing failed and this still-valid sealed token was handed
    /// out instead: why, for the one warning line the caller prints.
    public var renewalFailure: String?

    package init(profile: String, orgID: String, apiURL: String, token: String, expiresAt: Date, user: String?) {
        self.profile = profile
        self.orgID = orgID
        self.apiURL = apiURL
        self.token = token
        self.expiresAt = expiresAt
        self.user = user
    }
}

/// The variables of docs/exec.md's `exec` table, built from a
/// grant and the parent's environment.
package enum ChildEnvironment {
    package static let execMarker = "TALLYFY_VAULT_EXEC"

    /// Variables that carried unlock material, or were meant for our own
    /// CLI only: never passed on.
    package static let removed: Set<String> = Handover.variables.union([UnlockSources.passphraseVariable])

    /// The variables `exec` sets, in a stable order: `exported` and the
    /// nesting marker.
    package static func variables(for grant: TokenGrant) -> [(name: String, value: String)] {
        exported(for: grant) + [(execMarker, grant.profile)]
    }

    /// The variables `export` prints: those of `exec` without the marker
    /// `TALLYFY_VAULT_EXEC`, which means "this process is an exec child".
    /// A shell that ran `eval "$(tallyfy-vault export)"` is not one, and a
    /// later `exec` from it must not be refused as nested.
    package static func exported(for grant: TokenGrant) -> [(name: String, value: String)] {
        [
            ("TALLYFY_TOKEN", grant.token),
            ("TALLYFY_API_TOKEN", grant.token),
            ("TALLYFY_ORG_ID", grant.orgID),
            ("TALLYFY_API_URL", grant.apiURL),
            // What Tallyfy's own tools read for the API base URL: the
            // official CLI (tallyfy/cli, internal/config: TALLYFY_BASE_URL)
            // and the MCP server (tallyfy/mcp-public, server/constants.py:
            // TALLYFY_API_BASE_URL; it also falls back to TALLYFY_ORG_ID,
            // server/utils/auth_context.py). Without them a token for staging
            // or the emulator would be sent to api.tallyfy.com.
            ("TALLYFY_BASE_URL", grant.apiURL),
            ("TALLYFY_API_BASE_URL", grant.apiURL),
            ("TALLYFY_TOKEN_EXPIRES_AT", rfc3339(grant.expiresAt)),
        ]
    }

    /// The child's whole environment: the parent's, less unlock material and
    /// stale values of our variables, plus the grant's variables. A
    /// `TALLYFY_TOKEN_FILE` inherited from an outer `exec --keep-fresh` is
    /// dropped: it would name another grant's token.
    package static func build(parent: [String: String], grant: TokenGrant) -> [String: String] {
        var environment = parent.filter { !removed.contains($0.key) && $0.key != tokenFileVariable }
        for (name, value) in variables(for: grant) { environment[name] = value }
        return environment
    }

    /// The path of the token file `exec --keep-fresh` keeps renewed (`TokenFile`).
    package static let tokenFileVariable = "TALLYFY_TOKEN_FILE"

    /// The environment of a supervised child (`exec --keep-fresh`): as
    /// `build(parent:grant:)`, plus the path of the token file.
    package static func build(parent: [String: String], grant: TokenGrant, tokenFile: String) -> [String: String] {
        var environment = build(parent: parent, grant: grant)
        environment[tokenFileVariable] = tokenFile
        return environment
    }

    /// The environment of a child under `exec --proxy`: as
    /// `build(parent:grant:)`, but the token variables hold the proxy's
    /// `capability` and the URL variables the proxy's `url`; the token's
    /// expiry and an inherited token file are left out. No variable names
    /// or holds the token.
    package static func buildProxied(parent: [String: String], grant: TokenGrant, url: String, capability: String) -> [String: String] {
        var proxied = grant
        proxied.token = capability
        proxied.apiURL = url
        var environment = build(parent: parent, grant: proxied)
        environment["TALLYFY_TOKEN_EXPIRES_AT"] = nil
        return environment
    }

    /// Refuses `exec` inside `exec`: the inner one would see a token variable
    /// and a marker, and nesting usually means a wrapper script ran twice.
    package static func refuseNesting(_ parent: [String: String]) throws {
        if let profile = parent[execMarker], !profile.isEmpty {
            throw VaultError(.usage,
                "already running under `tallyfy-vault exec` (profile \"\(profile)\"); nesting is refused",
                hint: "use the TALLYFY_TOKEN this process already has, or run the inner command with `env -u TALLYFY_VAULT_EXEC` if you mean it")
        }
    }

    /// RFC 3339 in UTC, whole seconds: `2026-12-06T04:25:05Z`.
    package static func rfc3339(_ date: Date) -> String {
        // Clamped (to years 1..9999) so that no date, whatever a file held,
        // can trap the conversion to whole seconds.
        RFC3339.text(seconds: Int(VaultBounds.clamped(date.timeIntervalSince1970).rounded(.down)))
    }
}

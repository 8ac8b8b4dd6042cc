import Foundation
import TallyfyVaultCore

extension TokenBroker {
    /// Provisions a user with the application token (renewed first when it
    /// has less than five minutes left). The fields are checked before any
    /// request is made; the vault changes only if the token was renewed.
    package func createUser(profile: String, user: NewUser) async throws {
        try user.validate()
        let grant = try await grant(TokenRequest(profile: profile, minimumLifetime: Self.applicationTokenMarginForUserCalls))
        let apiURL = try EndpointURL.validate(grant.apiURL, name: "API URL")
        try await Self.withClient { client in
            try await client.createUser(apiURL: apiURL, orgID: grant.orgID, applicationToken: grant.token, user: user)
        }
        // A change in Tallyfy rather than in the vault, recorded all the same.
        try store.audit.recordChange(profile: profile, user: user.email)
    }

    /// Issues a new user-scoped token for `email` and seals it.
    package func issueUserToken(profile: String, email: String) async throws -> TokenGrant {
        try NewUser.validateEmail(email)
        return try await renewedGrant(TokenRequest(profile: profile, user: email, renewal: .always))
    }
}

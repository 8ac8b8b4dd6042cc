import Foundation
import Testing
@testable import TallyfyVaultCore
@testable import TallyfyVault

/// The documented shapes of Tallyfy's identifiers and names (issue 13).
@Suite struct TallyfyIdentifiersTests {
    @Test func organizationIDsAre32HexCharacters() {
        #expect(TallyfyIdentifiers.isOrganizationIDShaped("5e1d0c2b3a4f69788796a5b4c3d2e1f0"))
        #expect(TallyfyIdentifiers.isOrganizationIDShaped("5E1D0C2B3A4F69788796A5B4C3D2E1F0"))
        #expect(!TallyfyIdentifiers.isOrganizationIDShaped("org-test"))
        #expect(!TallyfyIdentifiers.isOrganizationIDShaped("5e1d0c2b3a4f69788796a5b4c3d2e1f"))
        #expect(!TallyfyIdentifiers.isOrganizationIDShaped("5e1d0c2b3a4f69788796a5b4c3d2e1fg"))
    }

    @Test func clientIDsAreNumbers() {
        #expect(TallyfyIdentifiers.isClientIDShaped("40213"))
        #expect(!TallyfyIdentifiers.isClientIDShaped("client-test"))
        #expect(!TallyfyIdentifiers.isClientIDShaped(""))
        #expect(!TallyfyIdentifiers.isClientIDShaped("١٢٣"))  // digits, but not ASCII
    }

    @Test func warningsNameWhatIsOdd() {
        #expect(TallyfyIdentifiers.warnings(orgID: "5e1d0c2b3a4f69788796a5b4c3d2e1f0", clientID: "1").isEmpty)
        let both = TallyfyIdentifiers.warnings(orgID: "org-1", clientID: "abc")
        #expect(both.count == 2)
        #expect(both.allSatisfy { $0.first?.isLowercase == true })
    }

    @Test func namesThatAreURLsAreRefused() {
        #expect(NewUser.nameProblem("https://example.com", field: "--first-name") != nil)
        #expect(NewUser.nameProblem("www.example.com", field: "--first-name") != nil)
        #expect(NewUser.nameProblem("Ann", field: "--first-name") == nil)
    }
}

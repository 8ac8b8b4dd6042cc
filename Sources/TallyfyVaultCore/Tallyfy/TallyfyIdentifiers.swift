/// The shapes of Tallyfy's identifiers, for warnings before a typo costs a
/// failed login.
///
/// Real organization IDs are 32 hexadecimal characters and real client IDs
/// are numbers: Tallyfy's token endpoint checks that `client_id` is numeric
/// and answers `invalid_client` otherwise (tallyfy/documentation,
/// open-api/api-clients/postman/troubleshooting.mdx). Both only warn, never
/// refuse: the emulator, staging set-ups and tests may use other shapes, and
/// the server stays the judge.
package enum TallyfyIdentifiers {
    /// 32 hexadecimal characters (either case).
    package static func isOrganizationIDShaped(_ value: String) -> Bool {
        value.utf8.count == 32 && value.utf8.allSatisfy { isHexDigit($0) }
    }

    /// Only ASCII digits.
    package static func isClientIDShaped(_ value: String) -> Bool {
        !value.isEmpty && value.utf8.allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
    }

    /// One line per identifier that does not look like Tallyfy's, each
    /// lower case and saying what was expected.
    package static func warnings(orgID: String, clientID: String) -> [String] {
        var lines: [String] = []
        if !isOrganizationIDShaped(orgID) {
            lines.append("organization ID \"\(orgID)\" is not 32 hexadecimal characters, the shape of Tallyfy's organization IDs")
        }
        if !isClientIDShaped(clientID) {
            lines.append("client ID \"\(clientID)\" is not a number; Tallyfy's token endpoint refuses non-numeric client IDs (invalid_client)")
        }
        return lines
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
    }
}

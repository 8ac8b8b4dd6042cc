import Foundation
import Testing
@testable import TallyfyVault
@testable import TallyfyVaultCore

@Suite struct NewUserTests {
    private func user(
        email: String = "ada@example.com", first: String = "Ada", last: String = "Lovelace",
        role: UserRole? = nil, timezone: String? = nil
    ) -> NewUser {
        NewUser(email: email, firstName: first, lastName: last, role: role, timezone: timezone)
    }

    private func problem(_ user: NewUser) -> VaultError? {
        do {
            try user.validate()
            return nil
        } catch let error as VaultError {
            return error
        } catch {
            Issue.record("unexpected error \(error)")
            return nil
        }
    }

    @Test func validUsersPass() throws {
        try user().validate()
        try user(role: .light, timezone: "Europe/London").validate()
        try user(email: "first.last+tag@sub.example.co.uk", first: String(repeating: "é", count: 32)).validate()
        try user(timezone: "UTC").validate()
        #expect(UserRole.allCases.map(\.rawValue) == ["admin", "standard", "light"])
    }

    @Test(arguments: ["", " ", "\t"])
    func blankNamesAreRefused(name: String) throws {
        let error = try #require(problem(user(first: name)))
        #expect(error.kind == .usage)
        #expect(error.message.contains("first name is empty"))
    }

    @Test func namesLongerThan32CharactersAreRefused() throws {
        try user(last: String(repeating: "x", count: 32)).validate()
        let error = try #require(problem(user(last: String(repeating: "x", count: 33))))
        #expect(error.message.contains("last name is 33 characters long"))
    }

    @Test func controlCharactersInNamesAreRefused() throws {
        let error = try #require(problem(user(first: "Ada\nLovelace")))
        #expect(error.message.contains("control characters"))
    }

    @Test(arguments: [
        "", "ada", "ada@", "@example.com", "ada@example", "ada@@example.com", "a@b@example.com",
        "ada @example.com", "ada@exam ple.com", "ada@example.com\n", "ada@.example.com", "ada@example..com",
        "ada@example.com.",
    ])
    func invalidEmailsAreRefused(email: String) throws {
        let error = try #require(problem(user(email: email)))
        #expect(error.kind == .usage)
        #expect(error.message.contains("email"))
        #expect(throws: VaultError.self) { try NewUser.validateEmail(email) }
    }

    @Test(arguments: ["Mars/Olympus_Mons", "europe london", "Not/AZone"])
    func unknownTimeZonesAreRefused(timezone: String) throws {
        let error = try #require(problem(user(timezone: timezone)))
        #expect(error.message.contains("timezone"))
    }

    @Test func everyBadFieldIsNamedAtOnce() throws {
        let error = try #require(problem(user(
            email: "nope", first: "", last: String(repeating: "y", count: 40), timezone: "Nowhere/Land")))
        #expect(error.kind == .usage)
        #expect(error.exitStatus == 64)
        for field in ["first name", "last name", "email", "timezone"] {
            #expect(error.message.contains(field), "missing \(field) in \(error.message)")
        }
        #expect(error.hint != nil)
    }

    @Test func quotedValuesCannotGarbleTheTerminal() {
        #expect(NewUser.quoted("a\u{1B}[31mb") == #""a\u{1B}[31mb""#)
        #expect(NewUser.quoted(String(repeating: "z", count: 200)).count <= 80)
    }

    @Test func requestBodyUsesTallyfyFieldNames() throws {
        let full = try NewUserBody(user: user(role: .admin, timezone: "America/New_York")).jsonData()
        #expect(String(decoding: full, as: UTF8.self)
            == #"{"email":"ada@example.com","first_name":"Ada","last_name":"Lovelace","role":"admin","timezone":"America/New_York"}"#)
        let minimal = try NewUserBody(user: user()).jsonData()
        #expect(String(decoding: minimal, as: UTF8.self) == #"{"email":"ada@example.com","first_name":"Ada","last_name":"Lovelace"}"#)
    }

    @Test func fieldErrorsOf422AreSummarised() throws {
        let body = Data(#"""
        {"message":"The given data was invalid.","errors":{"last_name":["The last_name may not be greater than 32 characters."],"email":["The email must be a valid email address.","Second\nline."]}}
        """#.utf8)
        let line = try #require(fieldErrors(in: body))
        #expect(line == "email: The email must be a valid email address. Second line.; last_name: The last_name may not be greater than 32 characters.")
        let long = Data(#"{"errors":{"email":["\#(String(repeating: "x", count: 500))"]}}"#.utf8)
        #expect(try #require(fieldErrors(in: long)).count <= 200)
        #expect(fieldErrors(in: Data("<html></html>".utf8)) == nil)
        #expect(fieldErrors(in: Data(#"{"message":"nope"}"#.utf8)) == nil)
    }
}

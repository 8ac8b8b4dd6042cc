import Foundation
import Testing

/// Tallyfy's official Python SDK (PyPI `tallyfy`, the version `tools/python-sdk`
/// pins), installed by `tools/test` into a private virtualenv.
enum PythonSDK {
    /// `.build/tallyfy-sdk-venv/bin/python` of this checkout, when the SDK is installed there.
    static let python: URL? = {
        let root = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let python = root.appendingPathComponent(".build/tallyfy-sdk-venv/bin/python")
        return FileManager.default.isExecutableFile(atPath: python.path) ? python : nil
    }()

    /// What an integration written with the SDK does first, configured only
    /// by the variables `tallyfy-vault exec` sets: `me` asks who it is,
    /// `users` lists the organization's members. An SDK error is printed as
    /// `TallyfyError STATUS: MESSAGE` on standard error, exit status 3.
    static let script = """
        import os, sys
        from tallyfy import TallyfySDK, TallyfyError

        sdk = TallyfySDK(api_key=os.environ["TALLYFY_API_TOKEN"], base_url=os.environ["TALLYFY_API_URL"])
        org = os.environ["TALLYFY_ORG_ID"]
        try:
            if sys.argv[1] == "me":
                me = sdk.get_current_user_info(org)
                print(me.email, me.full_name)
            else:
                for user in sdk.get_organization_users(org).data:
                    print(user.email)
        except TallyfyError as error:
            print(f"TallyfyError {error.status_code}: {error}", file=sys.stderr)
            sys.exit(3)

        """
}

/// A program written with Tallyfy's own Python SDK works under the vault,
/// against the emulator, with nothing but the variables `exec` sets.
@Suite(.enabled(
    if: PythonSDK.python != nil,
    "Tallyfy's Python SDK is not in .build/tallyfy-sdk-venv: tools/test installs it from PyPI with tools/python-sdk, and PyPI could not be reached (or tools/test was not run)"))
struct PythonSDKTests {
    @Test func theSDKLearnsItsUserListsTheMembersAndReportsABadToken() async throws {
        let python = try #require(PythonSDK.python)
        let world = try await LoggedIn.start()
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let script = try sandbox.write(PythonSDK.script, to: "integration.py")
        for (email, first, last) in [("ann@example.com", "Ann", "Lee"), ("bob@example.com", "Bob", "Ray")] {
            try sandbox.ok(["users", "create", "--email", email, "--first-name", first, "--last-name", last])
        }
        // The vault's own API calls so far (two users created) carried `APIClient`.
        #expect(try await world.emulator.clientHeaders() == ["APIClient": 2])

        let asAnn = try sandbox.ok(["exec", "--user", "ann@example.com", "--", python.path, script, "me"])
        #expect(asAnn.stdout == "ann@example.com Ann Lee\n", "\(asAnn.brief)")

        let asApplication = try sandbox.ok(["exec", "--", python.path, script, "users"])
        #expect(asApplication.stdout == "ann@example.com\nbob@example.com\n", "\(asApplication.brief)")

        // A token the API does not know: the SDK's own error, with the API's status and message.
        let wrong = try runProcess(python, [script, "me"], environment: [
            "PATH": sandbox.environment["PATH"] ?? "/usr/bin:/bin", "HOME": sandbox.root.path,
            "TALLYFY_API_TOKEN": "not-a-token", "TALLYFY_API_URL": world.emulator.apiURL, "TALLYFY_ORG_ID": "org-test",
        ])
        #expect(wrong.status == 3, "\(wrong.brief)")
        #expect(wrong.stderr == "TallyfyError 401: API request failed with status 401: Unauthenticated.\n")

        // The SDK said who it is (three calls); the vault kept sending
        // `APIClient` (the user token for Ann came through the API too).
        #expect(try await world.emulator.clientHeaders() == ["APIClient": 3, "TallyfySDK": 3])
    }

    /// The same program under `exec --proxy`: the SDK talks to the loopback
    /// proxy with the capability, unchanged, and the proxy passes its own
    /// `X-Tallyfy-Client: TallyfySDK` on.
    @Test func theSDKWorksUnchangedThroughTheProxy() async throws {
        let python = try #require(PythonSDK.python)
        let world = try await LoggedIn.start()
        defer { world.emulator.stop() }
        let sandbox = world.sandbox
        let script = try sandbox.write(PythonSDK.script, to: "integration.py")
        try sandbox.ok(["users", "create", "--email", "ann@example.com", "--first-name", "Ann", "--last-name", "Lee"])
        let asAnn = try sandbox.ok(["exec", "--proxy", "--user", "ann@example.com", "--", python.path, script, "me"])
        #expect(asAnn.stdout == "ann@example.com Ann Lee\n", "\(asAnn.brief)")
        let asApplication = try sandbox.ok(["exec", "--proxy", "--", python.path, script, "users"])
        #expect(asApplication.stdout == "ann@example.com\n", "\(asApplication.brief)")
        #expect(try await world.emulator.clientHeaders() == ["APIClient": 2, "TallyfySDK": 2])
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Storing, replacing and removing a profile's client credentials.
public enum Credentials {
    public static let defaultTokenURL = "https://go.tallyfy.com/oauth/token"
    public static let defaultAPIURL = "https://go.tallyfy.com/api"

    /// Stores credentials in `vault` under `profileName`. Everything is checked
    /// before anything changes. Replacing a profile's credentials drops its
    /// application token (it belonged to the old client); user tokens stay
    /// unless the organization changed.
    public static func set(
        in vault: UnlockedVault, profile profileName: String, orgID: String, clientID: String, secret: String,
        tokenURL: String?, apiURL: String?, now: Date
    ) throws {
        try validate(profile: profileName, orgID: orgID, clientID: clientID, tokenURL: tokenURL, apiURL: apiURL)
        let tokenURL = tokenURL ?? defaultTokenURL
        let apiURL = apiURL ?? defaultAPIURL
        guard !secret.isEmpty else { throw VaultError(.usage, "the client secret is empty; nothing was changed") }
        guard !secret.contains(where: { $0.isNewline }) else {
            throw VaultError(.usage, "the client secret spans several lines; give it on one line")
        }
        if let old = vault.content.profiles[profileName], old.orgID != orgID {
            vault.removeProfile(profileName)
        }
        vault.content.profiles[profileName] = Profile(
            orgID: orgID, clientID: clientID, clientSecret: secret, tokenURL: tokenURL, apiURL: trimmedSlash(apiURL),
            secretSetAt: now, applicationToken: nil)
    }

    /// Everything but the secret, checked before anyone is asked for the secret.
    public static func validate(profile: String, orgID: String, clientID: String, tokenURL: String?, apiURL: String?) throws {
        try checkProfileName(profile)
        try checkIdentifier(orgID, name: "--org")
        try checkIdentifier(clientID, name: "--client-id")
        _ = try EndpointURL.validate(tokenURL ?? defaultTokenURL, name: "token URL")
        _ = try EndpointURL.validate(apiURL ?? defaultAPIURL, name: "API URL")
    }

    /// Removes a profile and its user tokens; `.usage` when there is none.
    public static func remove(from vault: UnlockedVault, profile: String) throws {
        guard vault.content.profiles[profile] != nil else {
            throw VaultError(.configuration, "profile \"\(profile)\" has no credentials in this vault; nothing to remove")
        }
        vault.removeProfile(profile)
    }

    /// Organization and client IDs go into URLs and headers: printable, no spaces.
    static func checkIdentifier(_ value: String, name: String) throws {
        guard !value.isEmpty, value.count <= 200, value.allSatisfy({ $0.isASCII && !$0.isWhitespace && !$0.isNewline && $0 != "/" && ($0.asciiValue ?? 0) >= 0x21 }) else {
            throw VaultError(.usage, "\(name) must be 1 to 200 printable characters without spaces or slashes")
        }
    }

    /// Profile names appear in the clear summary and in Prometheus labels.
    public static func checkProfileName(_ name: String) throws {
        guard !name.isEmpty, name.count <= 64,
            name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) })
        else {
            throw VaultError(.usage, "profile name \"\(name)\" is not allowed", hint: "use 1 to 64 letters, digits, '-', '_' or '.'")
        }
    }

    private static func trimmedSlash(_ url: String) -> String {
        url.hasSuffix("/") ? String(url.dropLast()) : url
    }

    /// All of standard input (a secret is short; read in chunks until EOF).
    private static func readStandardInput() -> Data {
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 4096)
        defer { chunk.wipe() }
        while true {
            let count = read(0, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { return data }
            data.append(contentsOf: chunk[0..<count])
        }
    }

    /// The client secret from standard input (all of it, less the final line
    /// ending) or from a no-echo prompt: never from the command line.
    public static func readSecret(fromStandardInput: Bool, prompt: String) throws -> String {
        if fromStandardInput {
            var data = Self.readStandardInput()
            defer { data.wipe() }
            var text = String(decoding: data, as: UTF8.self)
            while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
            guard !text.isEmpty else { throw VaultError(.usage, "standard input was empty; expected the client secret") }
            return text
        }
        let bytes = try TerminalPrompt.readSecret(prompt: prompt)
        let text = bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        guard !text.isEmpty else { throw VaultError(.usage, "the client secret is empty; nothing was changed") }
        return text
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Storing, replacing and removing a profile's client credentials.
package enum Credentials {
    package static let defaultTokenURL = "https://go.tallyfy.com/oauth/token"
    package static let defaultAPIURL = "https://go.tallyfy.com/api"

    /// Stores credentials in `vault` under `profileName`. Everything is checked
    /// before anything changes. Replacing a profile's credentials drops its
    /// application token (it belonged to the old client); user tokens stay
    /// unless the organization changed.
    package static func set(
        in vault: UnlockedVault, profile profileName: String, orgID: String, clientID: String, secret: String,
        tokenURL: String?, apiURL: String?, now: Date
    ) throws {
        try validate(profile: profileName, orgID: orgID, clientID: clientID, tokenURL: tokenURL, apiURL: apiURL)
        let tokenURL = tokenURL ?? defaultTokenURL
        let apiURL = apiURL ?? defaultAPIURL
        try checkSecret(secret)
        if let old = vault.content.profiles[profileName], old.orgID != orgID {
            vault.removeProfile(profileName)
        }
        guard vault.content.profiles[profileName] != nil || vault.content.profiles.count < VaultBounds.maxProfiles else {
            throw VaultError(.usage, "the vault holds \(VaultBounds.maxProfiles) profiles, the most it can; nothing was changed",
                hint: "remove one with `tallyfy-vault --profile NAME credentials remove`")
        }
        vault.content.profiles[profileName] = Profile(
            orgID: orgID, clientID: clientID, clientSecret: secret, tokenURL: tokenURL, apiURL: trimmedSlash(apiURL),
            secretSetAt: now, applicationToken: nil)
    }

    /// A client secret the vault will seal: one non-empty line of at most
    /// `VaultBounds.maxSecretLength` bytes, no control characters.
    package static func checkSecret(_ secret: String, what: String = "the client secret") throws {
        guard !secret.isEmpty else { throw VaultError(.usage, "\(what) is empty; nothing was changed") }
        guard !secret.contains(where: { $0.isNewline }) else {
            throw VaultError(.usage, "\(what) spans several lines; give it on one line")
        }
        guard secret.utf8.count <= VaultBounds.maxSecretLength else {
            throw VaultError(.usage, "\(what) is longer than \(VaultBounds.maxSecretLength) bytes; nothing was changed",
                hint: "check that standard input holds only the secret")
        }
        guard !secret.unicodeScalars.contains(where: \.isControl) else {
            throw VaultError(.usage, "\(what) contains control characters; nothing was changed")
        }
    }

    /// Everything but the secret, checked before anyone is asked for the secret.
    package static func validate(profile: String, orgID: String, clientID: String, tokenURL: String?, apiURL: String?) throws {
        try checkProfileName(profile)
        try checkIdentifier(orgID, name: "--org")
        try checkIdentifier(clientID, name: "--client-id")
        for (url, name) in [(tokenURL, "token URL"), (apiURL, "API URL")] where (url?.utf8.count ?? 0) > VaultBounds.maxURLLength {
            throw VaultError(.usage, "the \(name) is longer than \(VaultBounds.maxURLLength) bytes")
        }
        _ = try EndpointURL.validate(tokenURL ?? defaultTokenURL, name: "token URL")
        _ = try EndpointURL.validate(apiURL ?? defaultAPIURL, name: "API URL")
    }

    /// Removes a profile and its user tokens; `.usage` when there is none.
    package static func remove(from vault: UnlockedVault, profile: String) throws {
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
    package static func checkProfileName(_ name: String) throws {
        guard !name.isEmpty, name.count <= 64,
            name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) })
        else {
            throw VaultError(.usage, "profile name \"\(name)\" is not allowed", hint: "use 1 to 64 letters, digits, '-', '_' or '.'")
        }
    }

    private static func trimmedSlash(_ url: String) -> String {
        url.hasSuffix("/") ? String(url.dropLast()) : url
    }

    /// Standard input up to `limit` bytes; `nil` when there is more (a
    /// secret is short: a huge input is a mistake, and is not read to its end).
    private static func readStandardInput(limit: Int) -> Data? {
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 4096)
        defer { chunk.wipe() }
        while true {
            let count = read(0, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { return data }
            data.append(contentsOf: chunk[0..<count])
            if data.count > limit {
                data.wipe()
                return nil
            }
        }
    }

    /// `bytes` less one final `\n` or `\r\n`, as for passphrase files.
    static func withoutFinalLineEnding(_ bytes: Data) -> Data {
        var end = bytes.endIndex
        if end > bytes.startIndex && bytes[end - 1] == UInt8(ascii: "\n") {
            end -= 1
            if end > bytes.startIndex && bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        }
        return bytes[bytes.startIndex..<end]
    }

    /// `--secret-stdin` with standard input at a terminal would show the
    /// secret as it is typed, and wait for Ctrl-D with no prompt: refused,
    /// before anything else is asked, pointing at the no-echo prompt.
    package static func refuseTerminalStandardInput() throws {
        guard isatty(0) == 1 else { return }
        throw VaultError(.usage, "--secret-stdin reads the secret from standard input, which is a terminal here: the secret would show as it is typed",
            hint: "leave out --secret-stdin to be asked for it without echo, or pipe it in (`--secret-stdin < FILE`)")
    }

    /// The client secret from standard input (all of it, less one final
    /// `\n` or `\r\n`, at most `VaultBounds.maxSecretLength` bytes) or from a
    /// no-echo prompt: never from the command line.
    package static func readSecret(fromStandardInput: Bool, prompt: String) throws -> String {
        ProcessHardening.protect()
        if fromStandardInput {
            try refuseTerminalStandardInput()
            // Room for the secret and its line ending, and one byte to notice more.
            guard var data = Self.readStandardInput(limit: VaultBounds.maxSecretLength + 2) else {
                throw VaultError(.usage, "standard input holds more than \(VaultBounds.maxSecretLength) bytes; expected one client secret",
                    hint: "pipe only the secret, e.g. from a file holding it on one line")
            }
            defer { data.wipe() }
            let text = String(decoding: withoutFinalLineEnding(data), as: UTF8.self)
            guard !text.isEmpty else { throw VaultError(.usage, "standard input was empty; expected the client secret") }
            try checkSecret(text)
            return text
        }
        let bytes = try TerminalPrompt.readSecret(prompt: prompt)
        let text = bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        try checkSecret(text)
        return text
    }
}

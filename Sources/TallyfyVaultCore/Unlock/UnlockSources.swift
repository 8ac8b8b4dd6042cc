#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Where the key or passphrase that opens the vault comes from.
///
/// docs/unlocking.md's order: `--key-file`, `--pkcs11` (a token), `--passphrase-file`,
/// `TALLYFY_VAULT_PASSPHRASE`, `$CREDENTIALS_DIRECTORY/tallyfy-vault.key`
/// (systemd `LoadCredential=`), then a no-echo prompt on the terminal. Every
/// non-interactive source that is present is collected, in that order, and
/// the first that opens a slot wins; the prompt is used only when there is
/// none, and without a terminal the answer is an error at once, never a hang.
public struct UnlockSources: Sendable {
    package var keyFile: String?
    package var passphraseFile: String?
    package var environment: [String: String]
    /// Where `keyFile` was named (`--key-file`, `TALLYFY_VAULT_KEY_FILE`),
    /// so that a missing key file's message can say which setting to fix.
    package var keyFileSource: String?
    /// `--pkcs11 URI`, else `TALLYFY_VAULT_PKCS11_URI`: a key on a token.
    package var pkcs11: String?

    package init(keyFile: String?, passphraseFile: String?, environment: [String: String], keyFileSource: String?, pkcs11: String? = nil) {
        self.keyFile = keyFile
        self.passphraseFile = passphraseFile
        self.environment = environment
        self.keyFileSource = keyFileSource
        self.pkcs11 = pkcs11
    }

    public init(keyFile: String?, passphraseFile: String?, environment: [String: String]) {
        self.init(keyFile: keyFile, passphraseFile: passphraseFile, environment: environment, keyFileSource: nil)
    }

    /// The variable that may carry a passphrase; removed from every child.
    package static let passphraseVariable = "TALLYFY_VAULT_PASSPHRASE"
    static let systemdCredentialName = "tallyfy-vault.key"
    static let maxPassphraseFileLength = 64 * 1024

    /// The non-interactive secrets that are present, in contract order.
    ///
    /// Every way into a vault's secrets passes here or through
    /// `UnlockedVault.open`, so both harden the process first
    /// (`ProcessHardening.protect`): no command has to remember to.
    ///
    /// A token is among them when its PIN is in a file; with `promptForPIN`
    /// (a command that may ask) its PIN is typed at the terminal instead.
    package func available(promptForPIN: Bool = false) throws -> [UnlockSecret] {
        ProcessHardening.protect()
        var secrets: [UnlockSecret] = []
        if let keyFile { secrets.append(try readNamedKeyFile(keyFile)) }
        if let pkcs11, let token = try pkcs11Secret(pkcs11, promptForPIN: promptForPIN, othersGiven: !secrets.isEmpty) {
            secrets.append(token)
        }
        if let passphraseFile { secrets.append(try Self.readPassphraseFile(passphraseFile)) }
        if let passphrase = environment[Self.passphraseVariable], !passphrase.isEmpty {
            secrets.append(UnlockSecret(kind: .passphrase, bytes: Self.guarded(passphrase), origin: Self.passphraseVariable))
        }
        if let directory = environment["CREDENTIALS_DIRECTORY"], !directory.isEmpty {
            let path = directory + "/" + Self.systemdCredentialName
            if FileManager.default.fileExists(atPath: path) {
                secrets.append(try Self.readKeyFile(path, origin: "the systemd credential \(Self.systemdCredentialName)"))
            }
        }
        return secrets
    }

    /// The secrets to open an existing vault with: the available ones, or
    /// else one passphrase typed at the terminal.
    public func secretsToOpen() throws -> [UnlockSecret] {
        let secrets = try available(promptForPIN: true)
        if !secrets.isEmpty { return secrets }
        return [try TerminalPrompt.passphrase(prompt: "Vault passphrase: ", confirm: false)]
    }

    /// The one secret a new vault (or a new slot) is made for: the first
    /// available source, or a passphrase typed twice.
    package func secretToCreate(what: String) throws -> UnlockSecret {
        if let first = try available(promptForPIN: true).first { return first }
        return try TerminalPrompt.passphrase(prompt: "New passphrase for \(what): ", confirm: true)
    }

    /// The key file named by the options or environment. When it is missing
    /// the likely cause is a skipped `keygen` (the quick start's first step)
    /// or a mistyped setting: the message names the setting, the hint both.
    func readNamedKeyFile(_ path: String) throws -> UnlockSecret {
        do {
            return try Self.readKeyFile(path)
        } catch let error as VaultError where error.kind == .notFound {
            let source = keyFileSource ?? "--key-file"
            throw VaultError(.notFound, "the key file \(path) (from \(source)) does not exist",
                hint: "make a new key with `tallyfy-vault keygen \(path)` (for a new vault), or point \(source) at the key file of this vault")
        }
    }

    /// A key file: exactly 32 bytes, readable by its owner only.
    package static func readKeyFile(_ path: String, origin: String? = nil) throws -> UnlockSecret {
        let bytes = try FileSafety.readSecretFile(path, what: "the key file", maxLength: 4096)
        guard bytes.count == UnlockSecret.keyFileLength else {
            throw VaultError(.usage, "\(path) is not a tallyfy-vault key file (it has \(bytes.count) bytes, a key file has \(UnlockSecret.keyFileLength))",
                hint: "make one with `tallyfy-vault keygen PATH`")
        }
        return UnlockSecret(kind: .keyFile, bytes: bytes, origin: origin ?? "key file \(path)")
    }

    /// A passphrase file: its first line, without the line ending.
    /// (`what` names it in messages: a PIN file is read the same way.)
    package static func readPassphraseFile(_ path: String, what: String = "passphrase") throws -> UnlockSecret {
        let bytes = try FileSafety.readSecretFile(path, what: "the \(what) file", maxLength: maxPassphraseFileLength)
        let lineLength = bytes.withUnsafeBytes { raw -> Int in
            var end = raw.firstIndex(of: UInt8(ascii: "\n")) ?? raw.count
            if end > 0 && raw[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            return end
        }
        guard lineLength > 0 else {
            throw VaultError(.usage, "the \(what) file \(path) is empty (its first line holds the \(what))")
        }
        return UnlockSecret(kind: .passphrase, bytes: bytes.prefix(lineLength), origin: "passphrase file \(path)")
    }

    static func guarded(_ text: String) -> SecretBytes {
        var copy = Array(text.utf8)
        defer { copy.wipe() }
        return SecretBytes(copying: copy)
    }
}

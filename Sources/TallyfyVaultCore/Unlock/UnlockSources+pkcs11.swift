#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

extension UnlockSources {
    package static let pkcs11Variable = "TALLYFY_VAULT_PKCS11_URI"
    package static let pinFileVariable = "TALLYFY_VAULT_PKCS11_PIN_FILE"

    /// The token named by `uri` with its PIN: from the file named by
    /// `TALLYFY_VAULT_PKCS11_PIN_FILE` (its first line), else typed without
    /// echo when `promptForPIN`, never from argv. `nil` when there is no PIN
    /// at hand and no prompt may be shown (the launcher's fast path, doctor),
    /// or when there is no terminal but another source was given.
    package func pkcs11Secret(_ uri: String, promptForPIN: Bool, othersGiven: Bool = false) throws -> UnlockSecret? {
        let parsed = try Pkcs11URI(parsing: uri)
        let pin: SecretBytes
        if let file = environment[Self.pinFileVariable], !file.isEmpty {
            let line = try Self.readPassphraseFile(file, what: "PIN")
            pin = line.bytes.withUnsafeBytes { SecretBytes(copying: $0) }
        } else if promptForPIN && (TerminalPrompt.isAvailable || !othersGiven) {
            do {
                pin = try TerminalPrompt.readSecret(prompt: "PIN for \(parsed.text): ")
            } catch let error as VaultError where error.kind == .configuration {
                throw VaultError(.configuration, "the PKCS#11 token of \(parsed.text) needs its PIN, and there is no terminal to ask on",
                    hint: "put the PIN in a file (mode 0600) and name it in \(Self.pinFileVariable)")
            }
        } else {
            return nil
        }
        let token = try Pkcs11Token(uri: parsed, environment: environment)
        return UnlockSecret(kind: .pkcs11, bytes: pin, origin: "PKCS#11 token \(parsed.text)", device: token)
    }
}

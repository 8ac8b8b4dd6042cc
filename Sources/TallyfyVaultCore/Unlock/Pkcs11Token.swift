#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
import CPKCS11
import Synchronization

/// One key on a PKCS#11 token (a YubiKey's PIV applet, a smart card, an
/// HSM, SoftHSM2 in tests), reached through the token's module, which is
/// loaded with `dlopen` only when a PKCS#11 slot is actually used: nothing
/// links against a module, so a machine without one runs every other slot
/// kind as before.
///
/// The private key never leaves the token: the vault asks the token to
/// decrypt a slot's 32-byte slot key (RSA-OAEP with SHA-256) and gets only
/// that back. The module is found in `TALLYFY_VAULT_PKCS11_MODULE`, else the
/// URI's `module-path`, else p11-kit's proxy module, which reaches every
/// module p11-kit is configured for.
package final class Pkcs11Token: Sendable {
    package let uri: Pkcs11URI
    package let modulePath: String
    private let opened = Mutex<Session?>(nil)

    package static let moduleVariable = "TALLYFY_VAULT_PKCS11_MODULE"
    /// Where Debian, Fedora and Arch install p11-kit's proxy module.
    static let proxyModules = [
        "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so", "/usr/lib/aarch64-linux-gnu/p11-kit-proxy.so",
        "/usr/lib64/p11-kit-proxy.so", "/usr/lib/p11-kit-proxy.so",
    ]

    package init(uri: Pkcs11URI, environment: [String: String]) throws {
        self.uri = uri
        if let module = environment[Self.moduleVariable], !module.isEmpty {
            modulePath = module
        } else if let module = uri.modulePath {
            modulePath = module
        } else if let proxy = Self.proxyModules.first(where: { FileManager.default.fileExists(atPath: $0) }) {
            modulePath = proxy
        } else {
            throw VaultError(.configuration,
                "no PKCS#11 module for \(uri.text): \(Self.moduleVariable) is not set and p11-kit's proxy module is not installed (looked at \(Self.proxyModules.joined(separator: ", ")))",
                hint: "set \(Self.moduleVariable) to the token's module, e.g. /usr/lib/softhsm/libsofthsm2.so or /usr/lib/x86_64-linux-gnu/libykcs11.so")
        }
    }

    /// A read-only session on the token, the module loaded and the token
    /// found; logged in with `pin` when given (and the token asks for one).
    private struct Session: @unchecked Sendable {
        var raw: tfy_p11_session
        var loggedIn: Bool
    }

    /// What a slot records about the key it was made for.
    struct KeyIdentity {
        var tokenLabel: String
        var tokenSerial: String
        var keyID: [UInt8]
    }

    /// Encrypts `plain` (a slot key) to the token's public key; the
    /// identity of the token and key is recorded in the slot.
    func encrypt(_ plain: borrowing SecretBytes, pin: borrowing SecretBytes) throws -> (ciphertext: [UInt8], identity: KeyIdentity) {
        try withSession(pin: pin) { session in
            let (key, identity) = try findKey(CKO_PUBLIC_KEY, in: &session)
            var out = [UInt8](repeating: 0, count: Pkcs11Token.maxModulusLength)
            var length = out.count
            var rv = plain.withUnsafeBytes { input in
                tfy_p11_rsa(&session, 0, 0, key, input.baseAddress!.assumingMemoryBound(to: UInt8.self), input.count, &out, &length)
            }
            if Self.oaepUnsupported(rv) {
                // OAEP applied here, bare RSA on the token: the same ciphertext.
                var modulus = 0
                rv = tfy_p11_modulus_length(&session, key, &modulus)
                guard rv == CKR_OK else { throw error(rv, doing: "reading the public key") }
                guard var encoded = plain.withUnsafeBytes({ RSAOAEP.encode($0, modulusLength: modulus) }) else {
                    throw VaultError(.usage, "the key \(uri.text) names is too short for RSA-OAEP with SHA-256", hint: "use an RSA key of 2048 bits or more")
                }
                defer { encoded.wipe() }
                length = out.count
                rv = tfy_p11_rsa(&session, 0, 1, key, encoded, encoded.count, &out, &length)
            }
            guard rv == CKR_OK else { throw error(rv, doing: "encrypting the slot key to its public key") }
            return (Array(out.prefix(length)), identity)
        }
    }

    static let maxModulusLength = 1024

    /// The answers of a token that can't do OAEP with SHA-256 (SoftHSM2 2.6
    /// says CKR_ARGUMENTS_BAD: it knows OAEP with SHA-1 only).
    private static func oaepUnsupported(_ rv: CK_RV) -> Bool {
        [CKR_ARGUMENTS_BAD, CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID].contains(rv)
    }

    /// The slot key in `ciphertext`, decrypted on the token; `nil` when the
    /// token's key is not the one it was encrypted to.
    func decrypt(_ ciphertext: [UInt8], pin: borrowing SecretBytes) throws -> SecretBox? {
        try withSession(pin: pin) { session in
            let (key, _) = try findKey(CKO_PRIVATE_KEY, in: &session)
            var out = SecretBytes(count: Pkcs11Token.maxModulusLength)
            var (rv, length) = out.withUnsafeMutableBytes { output in
                var length = output.count
                let rv = tfy_p11_rsa(&session, 1, 0, key, ciphertext, ciphertext.count,
                    output.baseAddress!.assumingMemoryBound(to: UInt8.self), &length)
                return (rv, length)
            }
            var raw = false
            if Self.oaepUnsupported(rv) {
                raw = true
                (rv, length) = out.withUnsafeMutableBytes { output in
                    var length = output.count
                    let rv = tfy_p11_rsa(&session, 1, 1, key, ciphertext, ciphertext.count,
                        output.baseAddress!.assumingMemoryBound(to: UInt8.self), &length)
                    return (rv, length)
                }
            }
            switch rv {
            case CKR_OK:
                if raw {
                    // The modulus is as long as the ciphertext written for it.
                    guard let message = out.withUnsafeBytes({ RSAOAEP.decode(UnsafeRawBufferPointer(rebasing: $0[..<length]), modulusLength: ciphertext.count) }),
                        message.count == Sodium.aeadKeyBytes
                    else { return nil }
                    return SecretBox(message)
                }
                return length == Sodium.aeadKeyBytes ? SecretBox(out.prefix(length)) : nil
            // Another key's ciphertext: OAEP's check fails (SoftHSM2 says
            // CKR_GENERAL_ERROR for that), or the length is not its modulus'.
            case CKR_ENCRYPTED_DATA_INVALID, CKR_ENCRYPTED_DATA_LEN_RANGE, CKR_DATA_INVALID, CKR_DATA_LEN_RANGE, CKR_GENERAL_ERROR:
                return nil
            default:
                throw error(rv, doing: "decrypting the slot key")
            }
        }
    }

    /// What `doctor` reports: the module loads, the token is present, the
    /// key's public half is there (no PIN needed, nothing decrypted).
    package func diagnose() throws -> String {
        var session = try openSession()
        let (_, identity) = try findKey(CKO_PUBLIC_KEY, in: &session)
        tfy_p11_close(&session)
        return "module \(modulePath) loaded; token \"\(identity.tokenLabel)\" (serial \(identity.tokenSerial)) present; key id \(Self.hex(identity.keyID)) found"
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef")
        return bytes.isEmpty ? "(none)" : String(bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] })
    }

    private func withSession<R>(pin: borrowing SecretBytes, _ body: (inout tfy_p11_session) throws -> R) throws -> R {
        var session = try opened.withLock { current -> Session in
            if let current { return current }
            let fresh = Session(raw: try openSession(), loggedIn: false)
            current = fresh
            return fresh
        }
        if !session.loggedIn {
            let rv = pin.withUnsafeBytes { tfy_p11_login(&session.raw, $0.baseAddress!.assumingMemoryBound(to: UInt8.self), $0.count) }
            guard rv == CKR_OK else { throw error(rv, doing: "logging in", flags: tfy_p11_token_flags(&session.raw)) }
            session.loggedIn = true
            opened.withLock { $0 = session }
        }
        return try body(&session.raw)
    }

    private func openSession() throws -> tfy_p11_session {
        var functions: CK_FUNCTION_LIST_PTR? = nil
        let loaded = tfy_p11_load(modulePath, &functions)
        guard loaded == CKR_OK, let functions else { throw error(loaded, doing: "loading the module") }
        var session = tfy_p11_session()
        let rv = withMatch { match in tfy_p11_open(functions, &match, &session) }
        guard rv == CKR_OK else { throw error(rv, doing: "opening a session on the token") }
        return session
    }

    private func findKey(_ keyClass: CK_OBJECT_CLASS, in session: inout tfy_p11_session) throws -> (CK_OBJECT_HANDLE, KeyIdentity) {
        var key = CK_OBJECT_HANDLE(0)
        var id = [UInt8](repeating: 0, count: 256)
        var idLength = id.count
        var keyType = CK_KEY_TYPE(0)
        let rv = withMatch { match in tfy_p11_find_key(&session, keyClass, &match, &key, &id, &idLength, &keyType) }
        guard rv == CKR_OK else { throw error(rv, doing: "finding the key") }
        let identity = KeyIdentity(
            tokenLabel: Self.text(&session.token_label), tokenSerial: Self.text(&session.serial), keyID: Array(id.prefix(idLength)))
        guard keyType == CKK_RSA else {
            throw VaultError(.usage, "the key \(uri.text) names on token \"\(identity.tokenLabel)\" is not an RSA key",
                hint: "a PKCS#11 slot needs an RSA key pair (2048 bits or more) on the token; EC keys are not supported yet")
        }
        return (key, identity)
    }

    private static func text<T>(_ field: inout T) -> String {
        withUnsafeBytes(of: &field) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// Calls `body` with the URI as the C match structure (its strings live
    /// for the call only).
    private func withMatch(_ body: (inout tfy_p11_match) -> CK_RV) -> CK_RV {
        func cString(_ value: String?, _ next: (UnsafePointer<CChar>?) -> CK_RV) -> CK_RV {
            guard let value else { return next(nil) }
            return value.withCString { next($0) }
        }
        return cString(uri.token) { token in
            cString(uri.serial) { serial in
                cString(uri.manufacturer) { manufacturer in
                    cString(uri.model) { model in
                        cString(uri.object) { object in
                            let id = uri.id ?? []
                            return id.withUnsafeBufferPointer { idBytes in
                                var match = tfy_p11_match(
                                    token: token, serial: serial, manufacturer: manufacturer, model: model, object: object,
                                    id: idBytes.baseAddress, id_len: idBytes.count, has_id: uri.id == nil ? 0 : 1)
                                return body(&match)
                            }
                        }
                    }
                }
            }
        }
    }

    /// The message for a module's answer: never a PIN, always the URI or
    /// the module's path, with what to do.
    func error(_ rv: CK_RV, doing what: String, flags: CK_FLAGS = 0) -> VaultError {
        let token = "the PKCS#11 token of \(uri.text)"
        switch rv {
        case CK_RV(TFY_P11_MODULE_UNLOADABLE):
            let reason = String(cString: tfy_p11_dlerror())
            return VaultError(.configuration, "the PKCS#11 module \(modulePath) could not be loaded (\(reason))",
                hint: "install the token's module, or point \(Self.moduleVariable) at it (e.g. /usr/lib/softhsm/libsofthsm2.so)")
        case CK_RV(TFY_P11_NOT_A_MODULE):
            return VaultError(.configuration, "\(modulePath) is not a PKCS#11 module (it has no C_GetFunctionList)",
                hint: "point \(Self.moduleVariable) at the token's PKCS#11 module")
        case CK_RV(TFY_P11_NO_TOKEN), CKR_TOKEN_NOT_PRESENT, CKR_DEVICE_REMOVED, CKR_SLOT_ID_INVALID, CKR_TOKEN_NOT_RECOGNIZED:
            return VaultError(.notFound, "no token matching \(uri.text) is present (module \(modulePath))",
                hint: "plug the token in; `pkcs11-tool --module \(modulePath) --list-token-slots` lists the tokens it sees")
        case CK_RV(TFY_P11_SEVERAL_TOKENS):
            return VaultError(.usage, "\(uri.text) matches more than one token",
                hint: "add serial=… (or a more specific token=…) to the URI; `pkcs11-tool --module \(modulePath) --list-token-slots` shows them")
        case CK_RV(TFY_P11_NO_OBJECT):
            return VaultError(.notFound, "the PKCS#11 token is present but holds no key matching \(uri.text)",
                hint: "check object= and id= against `pkcs11-tool --module \(modulePath) --list-objects --login`")
        case CK_RV(TFY_P11_SEVERAL_OBJECTS):
            return VaultError(.usage, "\(uri.text) matches more than one key on its token", hint: "add id=%XX to the URI")
        case CKR_PIN_INCORRECT, CKR_PIN_LEN_RANGE, CKR_PIN_INVALID:
            let left =
                flags & CK_FLAGS(CKF_USER_PIN_FINAL_TRY) != 0 ? " (the token says one try is left before it locks the PIN)"
                : flags & CK_FLAGS(CKF_USER_PIN_COUNT_LOW) != 0 ? " (the token says few tries are left before it locks the PIN)" : ""
            return VaultError(.refused, "wrong PIN for \(token)\(left)",
                hint: "check the file named by TALLYFY_VAULT_PKCS11_PIN_FILE (its first line is the PIN)", cause: .keyOpensNoSlot)
        case CKR_PIN_LOCKED:
            return VaultError(.refused, "the PIN of \(token) is locked after too many wrong tries",
                hint: "unlock it with the token's security officer PIN or PUK (e.g. `pkcs11-tool --unlock-pin --login --login-type so`), then try again")
        case CKR_PIN_EXPIRED:
            return VaultError(.refused, "the PIN of \(token) has expired", hint: "change it with the token's own tools, then try again")
        case CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID, CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_TYPE_INCONSISTENT:
            return VaultError(.configuration, "\(token) can't do RSA-OAEP with SHA-256 with that key (\(what))",
                hint: "use an RSA key pair made for decryption (e.g. `pkcs11-tool --keypairgen --key-type rsa:2048 --usage-decrypt`)")
        default:
            return VaultError(.io, "\(token) failed while \(what) (PKCS#11 error 0x\(String(rv, radix: 16)))",
                hint: "check the token and its module (\(modulePath)); `tallyfy-vault doctor` checks both")
        }
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// An RFC 7512 PKCS#11 URI naming one token and one key on it, e.g.
/// `pkcs11:token=ops;object=vault-key` or `pkcs11:token=ops;id=%01`.
///
/// Only what picks a token and a key is taken: `token`, `serial`,
/// `manufacturer`, `model`, `object`, `id`, `type` (of a key: `private` or
/// `public`, which is implied anyway) in the path, and `module-path` in the
/// query. A PIN in the URI (`pin-value`, `pin-source`) is refused: a URI is
/// given on the command line, where a secret shows in `ps` and in history.
package struct Pkcs11URI: Sendable, Equatable {
    package var token: String?
    package var serial: String?
    package var manufacturer: String?
    package var model: String?
    package var object: String?
    package var id: [UInt8]?
    package var modulePath: String?
    /// The URI as given, for messages (it holds no secret: those are refused).
    package var text: String

    package init(parsing text: String) throws {
        self.text = text
        guard text.hasPrefix("pkcs11:") else {
            throw Self.bad(text, "it does not start with pkcs11:")
        }
        let rest = text.dropFirst("pkcs11:".count)
        let parts = rest.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        for attribute in parts[0].split(separator: ";") {
            let (name, value) = try Self.attribute(attribute, in: text)
            switch name {
            case "token": token = try Self.decodedText(value, in: text)
            case "serial": serial = try Self.decodedText(value, in: text)
            case "manufacturer": manufacturer = try Self.decodedText(value, in: text)
            case "model": model = try Self.decodedText(value, in: text)
            case "object": object = try Self.decodedText(value, in: text)
            case "id": id = try Self.decoded(value, in: text)
            case "type":
                guard value == "private" || value == "public" else {
                    throw Self.bad(text, "type=\(value) is not a key (the vault needs type=private, or no type)")
                }
            case "pin-value", "pin-source":
                throw VaultError(.usage, "the PKCS#11 URI carries a PIN (\(name)); a PIN is never taken from the command line",
                    hint: "remove \(name) from the URI and put the PIN in a file named by TALLYFY_VAULT_PKCS11_PIN_FILE (or type it at the prompt)")
            default:
                // RFC 7512 lets a consumer ignore what it does not know only
                // for vendor attributes; anything else would silently widen the match.
                guard name.hasPrefix("x-") else {
                    throw Self.bad(text, "the attribute \(name) is not one tallyfy-vault matches on (token, serial, manufacturer, model, object, id)")
                }
            }
        }
        if parts.count == 2 {
            for attribute in parts[1].split(separator: "&") {
                let (name, value) = try Self.attribute(attribute, in: text)
                switch name {
                case "module-path": modulePath = try Self.decodedText(value, in: text)
                case "pin-value", "pin-source":
                    throw VaultError(.usage, "the PKCS#11 URI carries a PIN (\(name)); a PIN is never taken from the command line",
                        hint: "remove \(name) from the URI and put the PIN in a file named by TALLYFY_VAULT_PKCS11_PIN_FILE (or type it at the prompt)")
                default: continue
                }
            }
        }
        guard object != nil || id != nil else {
            throw Self.bad(text, "it names no key: add object=LABEL or id=%XX (`pkcs11-tool --list-objects` shows them)")
        }
    }

    private static func attribute(_ part: Substring, in text: String) throws -> (String, String) {
        guard let equals = part.firstIndex(of: "=") else { throw bad(text, "\(part) has no value") }
        return (String(part[..<equals]).lowercased(), String(part[part.index(after: equals)...]))
    }

    /// Percent-decoding (RFC 3986), byte for byte.
    static func decoded(_ value: String, in text: String) throws -> [UInt8] {
        var out: [UInt8] = []
        var bytes = value.utf8.makeIterator()
        while let byte = bytes.next() {
            guard byte == UInt8(ascii: "%") else {
                out.append(byte)
                continue
            }
            guard let high = bytes.next().flatMap(hexValue), let low = bytes.next().flatMap(hexValue) else {
                throw bad(text, "it has a broken %-escape")
            }
            out.append(high << 4 | low)
        }
        return out
    }

    private static func decodedText(_ value: String, in text: String) throws -> String {
        guard let decoded = String(validating: try decoded(value, in: text), as: UTF8.self), !decoded.contains("\0") else {
            throw bad(text, "a value is not UTF-8 text")
        }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    private static func bad(_ text: String, _ reason: String) -> VaultError {
        VaultError(.usage, "\(text) is not a PKCS#11 URI tallyfy-vault can use: \(reason)",
            hint: "write it as pkcs11:token=LABEL;object=KEY-LABEL or pkcs11:token=LABEL;id=%01 (RFC 7512)")
    }
}

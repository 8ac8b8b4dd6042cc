#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

// The client's side of the protocol, without Codable.
//
// A client is a short-lived process (the launcher's `exec`, Tallyfy CLI's
// `apiKeyHelper`), and in a fresh process the first use of each Codable type
// costs runtime work (protocol-conformance scans over the whole binary,
// generic metadata). Measured with perf on `exec -- true`, JSONEncoder and
// JSONDecoder made the launcher's whole exchange with the agent cost more
// CPU than opening the vault with a key file; written and read by hand it
// costs about a third of what it did. So a client does that. The agent,
// which pays that cost once in its life, keeps Codable; the tests check that
// both sides read each other's JSON alike (`AgentWireTests`).

extension AgentProtocol.Request {
    /// This request as one JSON object (what `JSONEncoder` writes, up to key order).
    func json() throws -> [UInt8] {
        var writer = JSONObjectWriter()
        writer.add("version", number: Double(version))
        writer.add("op", string: op.rawValue)
        if let vault { writer.add("vault", string: vault) }
        if let profile { writer.add("profile", string: profile) }
        if let user { writer.add("user", string: user) }
        if let minimumLifetime {
            guard minimumLifetime.isFinite else { throw AgentError.connection("a minimum lifetime that is not a number") }
            writer.add("minimumLifetime", number: minimumLifetime)
        }
        if let renewal { writer.add("renewal", string: renewal) }
        return writer.finished()
    }
}

extension AgentProtocol.Answer {
    /// Reads an answer frame's JSON as `JSONDecoder` would; throws on
    /// anything else (broken JSON, a missing field, a wrong type).
    init(json: [UInt8]) throws {
        var reader = JSONReader(json)
        let object = try reader.document().object()
        self.init(ok: try object.bool("ok"), error: try object.string("error"), message: try object.string("message"),
            hint: try object.string("hint"), exitStatus: try object.int32("exitStatus"),
            grant: try object.object("grant").map(AgentProtocol.WireGrant.init(json:)),
            status: try object.object("status").map(AgentProtocol.Status.init(json:)))
        version = try object.required(object.int("version"), "version")
    }
}

extension AgentProtocol.WireGrant {
    init(json object: JSONObject) throws {
        profile = try object.required(object.string("profile"), "profile")
        orgID = try object.required(object.string("orgID"), "orgID")
        apiURL = try object.required(object.string("apiURL"), "apiURL")
        token = try object.required(object.string("token"), "token")
        expiresAt = try object.required(object.number("expiresAt"), "expiresAt")
        user = try object.string("user")
        renewalFailure = try object.string("renewalFailure")
    }
}

extension AgentProtocol.Status {
    init(json object: JSONObject) throws {
        self.init(vault: try object.required(object.string("vault"), "vault"), locked: try object.bool("locked"),
            pid: try object.required(object.int32("pid"), "pid"),
            startedAt: try object.required(object.number("startedAt"), "startedAt"),
            idleTimeout: try object.number("idleTimeout"), maxLifetime: try object.number("maxLifetime"),
            served: try object.required(object.int("served"), "served"),
            renewals: try object.required(object.int("renewals"), "renewals"))
    }
}

// MARK: - Just enough JSON

/// Writes one flat JSON object of strings and numbers.
struct JSONObjectWriter {
    private var bytes: [UInt8] = [UInt8(ascii: "{")]

    mutating func add(_ key: String, string: String) {
        name(key)
        quote(string)
    }

    mutating func add(_ key: String, number: Double) {
        name(key)
        // Whole numbers as integers; others as Swift writes them, which is
        // valid JSON for every finite value ("0.5", "1e-05").
        if number == number.rounded(), abs(number) < 1e15 {
            bytes.append(contentsOf: String(Int64(number)).utf8)
        } else {
            bytes.append(contentsOf: "\(number)".utf8)
        }
    }

    mutating func finished() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }

    private mutating func name(_ key: String) {
        if bytes.count > 1 { bytes.append(UInt8(ascii: ",")) }
        quote(key)
        bytes.append(UInt8(ascii: ":"))
    }

    private mutating func quote(_ text: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                bytes.append(UInt8(ascii: "\\"))
                bytes.append(byte)
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xf)]])
            default:
                bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}

/// A parsed JSON value; arrays are read (and checked) but not kept, since
/// no answer field is one.
enum JSONValue {
    case string(String), number(Double), bool(Bool), null, object(JSONObject), array

    func object() throws -> JSONObject {
        guard case .object(let object) = self else { throw JSONReader.malformed("not an object") }
        return object
    }
}

/// An object's members, with typed accessors: `nil` for a member that is
/// absent or `null`, an error for one of another type.
struct JSONObject {
    var members: [String: JSONValue]

    func string(_ key: String) throws -> String? {
        switch members[key] {
        case nil, .null?: return nil
        case .string(let value)?: return value
        default: throw JSONReader.malformed("\(key) is not a string")
        }
    }

    func number(_ key: String) throws -> Double? {
        switch members[key] {
        case nil, .null?: return nil
        case .number(let value)?: return value
        default: throw JSONReader.malformed("\(key) is not a number")
        }
    }

    func int(_ key: String) throws -> Int? {
        guard let value = try number(key) else { return nil }
        guard let whole = Int(exactly: value) else { throw JSONReader.malformed("\(key) is not a whole number") }
        return whole
    }

    func int32(_ key: String) throws -> Int32? {
        guard let value = try int(key) else { return nil }
        guard let small = Int32(exactly: value) else { throw JSONReader.malformed("\(key) is out of range") }
        return small
    }

    func bool(_ key: String) throws -> Bool {
        guard case .bool(let value)? = members[key] else { throw JSONReader.malformed("\(key) is not true or false") }
        return value
    }

    func object(_ key: String) throws -> JSONObject? {
        switch members[key] {
        case nil, .null?: return nil
        case .object(let value)?: return value
        default: throw JSONReader.malformed("\(key) is not an object")
        }
    }

    func required<T>(_ value: T?, _ key: String) throws -> T {
        guard let value else { throw JSONReader.malformed("\(key) is missing") }
        return value
    }
}

/// A strict reader of one JSON document (RFC 8259), nested at most 32 deep.
struct JSONReader {
    private let bytes: [UInt8]
    private var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    static func malformed(_ why: String) -> AgentError { AgentError.connection("a frame is not the expected JSON (\(why))") }

    mutating func document() throws -> JSONValue {
        let value = try self.value(depth: 0)
        skipSpace()
        guard index == bytes.count else { throw Self.malformed("text after the value") }
        return value
    }

    private mutating func value(depth: Int) throws -> JSONValue {
        guard depth < 32 else { throw Self.malformed("nested too deeply") }
        skipSpace()
        guard index < bytes.count else { throw Self.malformed("it ends early") }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            index += 1
            var members: [String: JSONValue] = [:]
            skipSpace()
            if take(UInt8(ascii: "}")) { return .object(JSONObject(members: members)) }
            repeat {
                skipSpace()
                let key = try string()
                skipSpace()
                guard take(UInt8(ascii: ":")) else { throw Self.malformed("no colon after a key") }
                // JSONDecoder keeps the first of two equal keys; refuse, rather than read it otherwise.
                guard members[key] == nil else { throw Self.malformed("a key given twice") }
                members[key] = try value(depth: depth + 1)
                skipSpace()
            } while take(UInt8(ascii: ","))
            guard take(UInt8(ascii: "}")) else { throw Self.malformed("an object is not closed") }
            return .object(JSONObject(members: members))
        case UInt8(ascii: "["):
            index += 1
            skipSpace()
            if take(UInt8(ascii: "]")) { return .array }
            repeat { _ = try value(depth: depth + 1); skipSpace() } while take(UInt8(ascii: ","))
            guard take(UInt8(ascii: "]")) else { throw Self.malformed("an array is not closed") }
            return .array
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .null)
        default: return .number(try number())
        }
    }

    private mutating func skipSpace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0a, 0x0d: index += 1
            default: return
            }
        }
    }

    private mutating func take(_ byte: UInt8) -> Bool {
        guard index < bytes.count, bytes[index] == byte else { return false }
        index += 1
        return true
    }

    private mutating func literal(_ word: String, _ value: JSONValue) throws -> JSONValue {
        let word = Array(word.utf8)
        guard bytes.count - index >= word.count, Array(bytes[index..<index + word.count]) == word else {
            throw Self.malformed("an unknown word")
        }
        index += word.count
        return value
    }

    /// A number as RFC 8259 writes it (stricter than `Double(_:)`, which
    /// takes "1.", "+1" or "inf").
    private mutating func number() throws -> Double {
        let start = index
        _ = take(UInt8(ascii: "-"))
        let integer = index
        guard digits() > 0, bytes[integer] != UInt8(ascii: "0") || index == integer + 1 else { throw Self.malformed("a bad number") }
        if take(UInt8(ascii: ".")), digits() == 0 { throw Self.malformed("a bad number") }
        if take(UInt8(ascii: "e")) || take(UInt8(ascii: "E")) {
            _ = take(UInt8(ascii: "+")) || take(UInt8(ascii: "-"))
            guard digits() > 0 else { throw Self.malformed("a bad number") }
        }
        guard let value = Double(String(decoding: bytes[start..<index], as: UTF8.self)), value.isFinite else {
            throw Self.malformed("a bad number")
        }
        return value
    }

    private mutating func digits() -> Int {
        let start = index
        while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
        return index - start
    }

    private mutating func string() throws -> String {
        guard take(UInt8(ascii: "\"")) else { throw Self.malformed("a key is not a string") }
        var utf8: [UInt8] = []
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                guard let text = String(validating: utf8, as: UTF8.self) else { throw Self.malformed("a string is not UTF-8") }
                return text
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { break }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8.append(escape)
                case UInt8(ascii: "b"): utf8.append(0x08)
                case UInt8(ascii: "f"): utf8.append(0x0c)
                case UInt8(ascii: "n"): utf8.append(0x0a)
                case UInt8(ascii: "r"): utf8.append(0x0d)
                case UInt8(ascii: "t"): utf8.append(0x09)
                case UInt8(ascii: "u"): utf8.append(contentsOf: try unicodeEscape())
                default: throw Self.malformed("an unknown escape")
                }
            case 0..<0x20:
                throw Self.malformed("a control character in a string")
            default:
                utf8.append(byte)
            }
        }
        throw Self.malformed("a string is not closed")
    }

    /// After `\u`: four hex digits, or a surrogate pair of two escapes.
    private mutating func unicodeEscape() throws -> [UInt8] {
        var scalar = try hex4()
        if (0xD800..<0xDC00).contains(scalar) {
            guard take(UInt8(ascii: "\\")), take(UInt8(ascii: "u")) else { throw Self.malformed("a lone surrogate") }
            let low = try hex4()
            guard (0xDC00..<0xE000).contains(low) else { throw Self.malformed("a lone surrogate") }
            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
        }
        guard let unicode = Unicode.Scalar(scalar) else { throw Self.malformed("a lone surrogate") }
        return Array(String(Character(unicode)).utf8)
    }

    private mutating func hex4() throws -> UInt32 {
        guard bytes.count - index >= 4 else { throw Self.malformed("a short \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let digit = Character(Unicode.Scalar(bytes[index])).hexDigitValue else { throw Self.malformed("a bad \\u escape") }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// How `export` prints the child's variables.
public enum ExportFormat: String, Sendable, CaseIterable {
    /// `export NAME='value'` lines, safe for `eval` in any POSIX shell.
    case sh
    /// `NAME='value'` lines as dotenv loaders read them (single quotes: no
    /// `$` expansion in python-dotenv, docker compose or node's dotenv).
    case dotenv
    /// One JSON object keyed by variable name.
    case json

    public func render(_ variables: [(name: String, value: String)]) throws -> String {
        switch self {
        case .sh:
            return variables.map { "export \($0.name)=\(Self.shellQuoted($0.value))" }.joined(separator: "\n")
        case .dotenv:
            return variables.map { "\($0.name)=\(Self.dotenvQuoted($0.value))" }.joined(separator: "\n")
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let object = Dictionary(variables.map { ($0.name, $0.value) }, uniquingKeysWith: { $1 })
            return String(decoding: try encoder.encode(object), as: UTF8.self)
        }
    }

    /// Single quotes, with each `'` written as `'\''`: nothing inside is expanded.
    static func shellQuoted(_ value: String) -> String {
        "'" + value.replacing("'", with: "'\\''") + "'"
    }

    /// Single quotes when possible; otherwise double quotes with `\\`, `"`,
    /// `$` and newlines escaped, which dotenv loaders unescape.
    static func dotenvQuoted(_ value: String) -> String {
        if !value.contains("'") && !value.contains(where: \.isNewline) { return "'\(value)'" }
        var escaped = ""
        for character in value {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "$": escaped += "\\$"
            case "\n": escaped += "\\n"
            case "\r": escaped += "\\r"
            default: escaped.append(character)
            }
        }
        return "\"\(escaped)\""
    }
}

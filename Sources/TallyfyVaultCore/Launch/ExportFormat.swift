#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// How `export` prints the child's variables.
package enum ExportFormat: String, Sendable, CaseIterable {
    /// `export NAME='value'` lines, safe for `eval` in any POSIX shell.
    case sh
    /// `NAME=value` lines, unquoted, that every common reader takes the same
    /// way: `sh` (`set -a; . FILE`), docker `--env-file` (which keeps quotes as
    /// part of the value), python-dotenv and systemd `EnvironmentFile=`. That
    /// holds only for a safe set of characters (`dotenvSafe`); a value with
    /// any other character is refused rather than quoted, since no quoting
    /// means the same thing to all four.
    case dotenv
    /// One JSON object keyed by variable name.
    case json

    package func render(_ variables: [(name: String, value: String)]) throws -> String {
        switch self {
        case .sh:
            return variables.map { "export \($0.name)=\(Self.shellQuoted($0.value))" }.joined(separator: "\n")
        case .dotenv:
            return try variables.map { "\($0.name)=\(try Self.dotenvValue($0.value, name: $0.name))" }.joined(separator: "\n")
        case .json:
            return try PlainJSON.string(Dictionary(variables.map { ($0.name, $0.value) }, uniquingKeysWith: { $1 }))
        }
    }

    /// Single quotes, with each `'` written as `'\''`: nothing inside is expanded.
    static func shellQuoted(_ value: String) -> String {
        "'" + value.replacing("'", with: "'\\''") + "'"
    }

    /// The characters a dotenv value may hold: those of JWTs (base64url and
    /// `.`), URLs without userinfo, and IDs. None is special, unquoted, to
    /// `sh` (no `$`, backtick, quote, backslash, space, `~`, `#`, `;`, `&`,
    /// `|`, `<`, `>`, `(`, `)`, `*`, `?`, `[`, `]`), to docker, to
    /// python-dotenv (no `$`, `#`, quotes) or to systemd (no quotes, `\`).
    static func isDotenvSafe(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "-_.+/=:@,%".utf8.contains(byte)
        }
    }

    /// `value` as it goes into a .env file, or a usage error naming the
    /// variable (never its value: it may be a token).
    static func dotenvValue(_ value: String, name: String) throws -> String {
        guard value.utf8.allSatisfy(isDotenvSafe) else {
            throw VaultError(.usage,
                "\(name) holds characters that a .env file cannot carry safely for every reader (sh, docker, python-dotenv, systemd)",
                hint: "use `export --format sh` for eval, or `--format json`; or `exec`, which needs no file")
        }
        return value
    }
}

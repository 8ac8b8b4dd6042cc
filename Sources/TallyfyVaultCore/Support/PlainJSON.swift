#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The JSON every command prints (`status`, `check`, `export`, `token`,
/// `doctor`): keys sorted, slashes not escaped, so output is stable and
/// URLs read as written.
package enum PlainJSON {
    package static func string(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}

import Foundation
import TallyfyVault

#if canImport(Glibc)
    import Glibc
#endif

/// Everything the commands print goes through here.
enum Output {
    static func line(_ text: String) {
        print(text)
    }

    /// A note on standard error that is not an error (e.g. "sealed").
    static func note(_ text: String) {
        FileHandle.standardError.write(Data("tallyfy-vault: \(text)\n".utf8))
    }

    static func fail(_ message: String, hint: String?, status: Int32) -> Never {
        var text = "tallyfy-vault: \(message)\n"
        if let hint { text += "tallyfy-vault: hint: \(hint)\n" }
        FileHandle.standardError.write(Data(text.utf8))
        fflush(nil)
        exit(status)
    }

    /// JSON with sorted keys, for machine-readable formats.
    static func json(_ value: some Encodable) throws -> String {
        try PlainJSON.string(value)
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Key files: 32 random bytes, mode 0600, never overwritten.
package enum KeyFile {
    /// Writes a new key file at `path`; refuses when something is there.
    package static func generate(at path: String) throws {
        if FileManager.default.fileExists(atPath: path) {
            throw VaultError(.usage, "\(path) exists already; refusing to overwrite a key file",
                hint: "choose another path: a vault sealed for the old key would be lost with it")
        }
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        guard FileManager.default.fileExists(atPath: directory) else {
            throw VaultError(.notFound, "the folder \(directory) does not exist", hint: "create it first (mkdir -m 700)")
        }
        let key = SecretBytes.random(count: UnlockSecret.keyFileLength)
        try key.withUnsafeBytes { bytes in
            try FileSafety.atomicReplace(path, with: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: bytes.baseAddress!), count: bytes.count, deallocator: .none), exclusive: true)
        }
    }
}

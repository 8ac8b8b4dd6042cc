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

/// Runs async library work from a synchronous command. Only the commands
/// that talk to Tallyfy use it, so the `exec` fast path never starts the
/// concurrency runtime's threads.
func runBlocking<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) throws -> T {
    nonisolated(unsafe) var result: Result<T, any Error>? = nil
    let done = DispatchSemaphore(value: 0)
    Task {
        do { result = .success(try await work()) } catch { result = .failure(error) }
        done.signal()
    }
    done.wait()
    return try result!.get()
}

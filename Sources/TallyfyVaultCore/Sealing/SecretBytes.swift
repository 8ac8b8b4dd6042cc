import CSodium
#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Secret bytes in libsodium-guarded memory.
///
/// The memory comes from `sodium_malloc` (guard pages, locked so it is not
/// swapped out) and is zeroed and freed by `sodium_free` when the single
/// owner goes away. The type is `~Copyable`, so the bytes are never silently
/// duplicated, and it has no `description`, no `Codable` conformance and no
/// `String` conversion: the only way to the bytes is a scoped closure.
package struct SecretBytes: ~Copyable {
    private let pointer: UnsafeMutableRawPointer
    /// The number of secret bytes (the allocation is never empty).
    package let count: Int

    /// Zero-filled guarded memory of `count` bytes.
    package init(count: Int) {
        _ = Sodium.ready
        guard let memory = sodium_malloc(max(count, 1)) else {
            fatalError("sodium_malloc could not allocate \(count) bytes of guarded memory")
        }
        memset(memory, 0, max(count, 1))
        pointer = memory
        self.count = count
    }

    /// A copy of `bytes` in guarded memory. The caller remains responsible for
    /// wiping the source when it is secret.
    package init(copying source: some ContiguousBytes) {
        self.init(count: source.withUnsafeBytes { $0.count })
        source.withUnsafeBytes { bytes in
            if bytes.count > 0 { pointer.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        }
    }

    /// `count` fresh random bytes, generated directly into guarded memory.
    package static func random(count: Int) -> SecretBytes {
        let secret = SecretBytes(count: count)
        randombytes_buf(secret.pointer, count)
        return secret
    }

    deinit {
        sodium_free(pointer)
    }

    /// Read access to the bytes for the duration of `body` only.
    package func withUnsafeBytes<R: ~Copyable, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    /// Write access to the bytes for the duration of `body` only.
    package mutating func withUnsafeMutableBytes<R: ~Copyable, E: Error>(
        _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        try body(UnsafeMutableRawBufferPointer(start: pointer, count: count))
    }

    /// The first `length` bytes as a new guarded buffer.
    func prefix(_ length: Int) -> SecretBytes {
        precondition(length <= count)
        return SecretBytes(copying: UnsafeRawBufferPointer(start: pointer, count: length))
    }
}

/// One guarded buffer reused for many short secrets in a row (each record of
/// a listing or a rekey): a `sodium_malloc` costs about ten system calls
/// (guard pages, mlock, mprotect), which for ten thousand records was most of
/// the time `users list` and `rekey` took. Each use is wiped when it ends.
struct GuardedScratch: ~Copyable {
    /// Allocated on first use, so one lookup costs one allocation.
    private var buffer: SecretBytes? = nil

    /// The first `count` bytes of the buffer (grown when too small) for the
    /// duration of `body`, zeroed afterwards.
    mutating func use<R, E: Error>(_ count: Int, _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        let capacity = buffer?.count ?? 0
        if buffer == nil || capacity < count { buffer = SecretBytes(count: max(count, 2 * capacity)) }
        return try buffer!.withUnsafeMutableBytes { (all) throws(E) -> R in
            let part = UnsafeMutableRawBufferPointer(rebasing: all[..<count])
            defer { if count > 0 { sodium_memzero(part.baseAddress, count) } }
            return try body(part)
        }
    }
}

/// A reference-counted home for `SecretBytes`, for places that need to keep a
/// key alive across several calls (an opened vault keeps its data key here).
package final class SecretBox: @unchecked Sendable {
    package let bytes: SecretBytes
    package init(_ bytes: consuming SecretBytes) { self.bytes = bytes }
}

extension Data {
    /// Overwrites the bytes with zeros: for the plain copy an encoder makes.
    mutating func wipe() {
        withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) }
    }
}

extension Array where Element == UInt8 {
    /// Overwrites the array's storage with zeros: for short-lived plain copies
    /// of secret bytes that had to exist as an ordinary array.
    mutating func wipe() {
        withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) }
    }
}

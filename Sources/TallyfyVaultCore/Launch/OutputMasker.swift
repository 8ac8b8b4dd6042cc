/// `exec --mask`: replaces every form of every secret in a child's output with
/// `OutputMasker.marker`, exactly, across any chunking of the output.
///
/// All forms of all secrets are matched by one Aho-Corasick automaton over
/// bytes (a dense table over the byte classes that occur in some form), so
/// the cost per byte does not grow with the number of secrets. `feed` returns
/// at once every byte whose fate is decided: it holds back only the bytes
/// that are still the beginning of some form (the automaton's depth, at most
/// the longest form minus one). Waiting does not decide anything, so there is
/// no flush on a timer: a held prefix goes out when the next byte rules it
/// out, or at `finish` (the end of the stream). Holding it any shorter would
/// print the first part of a token that a child writes in two writes with a
/// pause between them.
///
/// Each run of overlapping matches becomes one marker; two matches that only
/// touch become two. Everything else passes byte for byte, whatever it is
/// (binary, invalid UTF-8). Secrets can be added mid-stream (a renewed token
/// under `--keep-fresh`): the held bytes are scanned again for them.
package struct OutputMasker: Sendable {
    /// What a secret is replaced with (docs/exec.md, "Masking a command's output").
    package static let marker: [UInt8] = Array("<redacted>".utf8)

    private var forms: Set<[UInt8]> = []
    private var automaton = Automaton(patterns: [])
    private var state: Int32 = 0
    /// The bytes from absolute position `bufferStart` to `end`: those not yet
    /// emitted, and those the automaton's state stands for (needed again
    /// when secrets are added).
    private var buffer: [UInt8] = []
    private var bufferStart = 0
    private var end = 0
    /// Everything before this absolute position has gone out (raw or as a marker).
    private var emitted = 0
    /// Matched runs not yet emitted, sorted, disjoint, all at or after `emitted`.
    private var pending: [(start: Int, end: Int)] = []

    package init(secrets: [[UInt8]] = []) {
        _ = add(secrets)
    }

    /// How many bytes are held back now (for tests and the benchmark).
    package var held: Int { end - emitted }

    /// Every form of every secret the masker replaces.
    package var patterns: Set<[UInt8]> { forms }

    /// Adds `secrets` (each expanded into its `SecretForms`) and returns what
    /// may now be emitted: a held byte can turn out to be a new secret's.
    package mutating func add(_ secrets: [[UInt8]]) -> [UInt8] {
        let before = forms.count
        for secret in secrets { forms.formUnion(SecretForms.of(secret)) }
        guard forms.count != before else { return [] }
        automaton = Automaton(patterns: Array(forms))
        // Scan the kept bytes again: the state must stand for the new forms
        // too, and a new form may already be among them. The pending runs
        // lie in those bytes and are found again, in order of their end.
        state = 0
        pending.removeAll()
        var position = bufferStart
        for byte in buffer {
            state = automaton.next(state, byte)
            position += 1
            let length = Int(automaton.matchLength[Int(state)])
            if length > 0 { record(start: position - length, end: position) }
        }
        return emit(safe: end - Int(automaton.depth[Int(state)]))
    }

    /// Takes the next bytes of the stream; returns those that can go out.
    package mutating func feed(_ chunk: UnsafeBufferPointer<UInt8>) -> [UInt8] {
        guard !chunk.isEmpty else { return [] }
        let base = end
        var current = state
        var found: [(start: Int, end: Int)] = []
        let automaton = automaton
        let classCount = automaton.classCount
        let stride = automaton.skipStride
        automaton.table.withUnsafeBufferPointer { table in
            automaton.byteClass.withUnsafeBufferPointer { byteClass in
                automaton.matchLength.withUnsafeBufferPointer { matchLength in
                    automaton.trigrams.withUnsafeBufferPointer { trigrams in
                        var index = 0
                        let count = chunk.count
                        while index < count {
                            if current == 0 && stride > 0 {
                                // At the root, the three bytes that end the
                                // shortest form's window decide whether a form
                                // can start in the next `stride` bytes.
                                while index &+ stride &+ 1 < count,
                                    !Automaton.contains(trigrams, chunk[index &+ stride &- 1], chunk[index &+ stride], chunk[index &+ stride &+ 1])
                                {
                                    index &+= stride
                                }
                            }
                            current = table[Int(current) &* classCount &+ Int(byteClass[Int(chunk[index])])]
                            let length = Int(matchLength[Int(current)])
                            index &+= 1
                            if length > 0 { found.append((base + index - length, base + index)) }
                        }
                    }
                }
            }
        }
        state = current
        end += chunk.count
        let safe = end - Int(automaton.depth[Int(state)])
        if found.isEmpty && pending.isEmpty && buffer.isEmpty {
            // Nothing held and nothing found, the usual chunk of ordinary
            // text: what is decided goes out straight from the chunk.
            let decided = safe - base
            buffer.append(contentsOf: UnsafeBufferPointer(rebasing: chunk[decided...]))
            bufferStart = safe
            emitted = safe
            return Array(UnsafeBufferPointer(rebasing: chunk[..<decided]))
        }
        buffer.append(contentsOf: chunk)
        for match in found { record(start: match.start, end: match.end) }
        return emit(safe: safe)
    }

    package mutating func feed(_ chunk: [UInt8]) -> [UInt8] {
        chunk.withUnsafeBufferPointer { feed($0) }
    }

    /// The end of the stream: nothing held can become a secret any more.
    package mutating func finish() -> [UInt8] {
        let out = emit(safe: end)
        state = 0
        buffer.removeAll()
        bufferStart = end
        return out
    }

    /// Notes a match of [start, end). Matches arrive in order of their end,
    /// and none starts before the `safe` point of an earlier `emit`, so one
    /// that starts before `emitted` overlaps the last marker and extends it.
    private mutating func record(start: Int, end matchEnd: Int) {
        if start < emitted {
            // It ends after every pending run, which all start at or after
            // `emitted`: it covers them.
            pending.removeAll()
            emitted = max(emitted, matchEnd)
            return
        }
        var merged = (start: start, end: matchEnd)
        while let last = pending.last, last.end > merged.start {
            merged.start = min(merged.start, last.start)
            pending.removeLast()
        }
        pending.append(merged)
    }

    /// Emits everything decided: raw bytes before `safe` (no later match can
    /// reach back before it) and each pending run that starts at or before
    /// it. A run that starts later waits even when it touches the last
    /// marker: a later match may still overlap both, and then they are one.
    private mutating func emit(safe: Int) -> [UInt8] {
        var out: [UInt8] = []
        var cursor = emitted
        var done = 0
        out.reserveCapacity(max(0, safe - cursor) + OutputMasker.marker.count)
        for run in pending {
            guard run.start <= safe else { break }
            out.append(contentsOf: buffer[(cursor - bufferStart)..<(run.start - bufferStart)])
            out.append(contentsOf: OutputMasker.marker)
            cursor = run.end
            done += 1
        }
        pending.removeFirst(done)
        if cursor < safe {
            out.append(contentsOf: buffer[(cursor - bufferStart)..<(safe - bufferStart)])
            cursor = safe
        }
        emitted = cursor
        let keepFrom = min(emitted, end - Int(automaton.depth[Int(state)]))
        if keepFrom > bufferStart {
            buffer.removeFirst(keepFrom - bufferStart)
            bufferStart = keepFrom
        }
        return out
    }
}

/// The forms of a secret `OutputMasker` looks for: the ways a program
/// commonly prints a token it was given.
package enum SecretForms {
    /// Shorter forms are dropped: they would mask ordinary text (an alignment
    /// form of a short secret can be a few characters).
    package static let minimumLength = 8

    /// Raw; percent-encoded (upper- and lower-case hex); JSON-string-escaped
    /// (also with `\/`); standard base64 and base64url, with and without
    /// padding; and the characters of the base64 (both alphabets) that
    /// depend on the secret alone when it sits at each of the three byte
    /// alignments inside a longer base64 string. `Bearer <token>` in any case
    /// is covered by the raw form: it becomes `Bearer <redacted>`.
    package static func of(_ secret: [UInt8]) -> Set<[UInt8]> {
        guard !secret.isEmpty else { return [] }
        var forms: Set<[UInt8]> = [secret]
        forms.insert(percentEncoded(secret, hex: upperHex))
        forms.insert(percentEncoded(secret, hex: lowerHex))
        forms.insert(jsonEscaped(secret, slash: false))
        forms.insert(jsonEscaped(secret, slash: true))
        for alphabet in [standard, url] {
            let padded = base64(secret, alphabet: alphabet, pad: true)
            forms.insert(padded)
            forms.insert(base64(secret, alphabet: alphabet, pad: false))
            for offset in 0..<3 { forms.insert(aligned(secret, offset: offset, alphabet: alphabet)) }
        }
        return forms.filter { $0.count >= minimumLength }
    }

    static let standard = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    static let url = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    static let upperHex = Array("0123456789ABCDEF".utf8)
    static let lowerHex = Array("0123456789abcdef".utf8)

    static func base64(_ bytes: [UInt8], alphabet: [UInt8], pad: Bool) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let count = min(3, bytes.count - index)
            var group = UInt32(bytes[index]) << 16
            if count > 1 { group |= UInt32(bytes[index + 1]) << 8 }
            if count > 2 { group |= UInt32(bytes[index + 2]) }
            for char in 0..<4 {
                if char <= count {
                    out.append(alphabet[Int((group >> UInt32(18 - 6 * char)) & 0x3f)])
                } else if pad {
                    out.append(UInt8(ascii: "="))
                }
            }
            index += 3
        }
        return out
    }

    /// The base64 characters fixed by `secret` alone when `offset` bytes of
    /// something else precede it in the encoded data (and anything may follow):
    /// character i covers bits 6i..<6i+6, the secret bits 8·offset..<8·(offset+n).
    static func aligned(_ secret: [UInt8], offset: Int, alphabet: [UInt8]) -> [UInt8] {
        let encoded = base64([UInt8](repeating: 0, count: offset) + secret, alphabet: alphabet, pad: false)
        let first = (8 * offset + 5) / 6
        let last = 8 * (offset + secret.count) / 6  // exclusive
        guard first < last else { return [] }
        return Array(encoded[first..<last])
    }

    /// RFC 3986: everything but the unreserved characters as %XX.
    static func percentEncoded(_ secret: [UInt8], hex: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        for byte in secret {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.append(byte)
            default:
                out += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0xf)]]
            }
        }
        return out
    }

    /// The inside of a JSON string holding `secret` (RFC 8259 §7), with `/`
    /// as `\/` when `slash` (as PHP's json_encode writes it).
    static func jsonEscaped(_ secret: [UInt8], slash: Bool) -> [UInt8] {
        var out: [UInt8] = []
        for byte in secret {
            switch byte {
            case UInt8(ascii: "\""): out += Array(#"\""#.utf8)
            case UInt8(ascii: "\\"): out += Array(#"\\"#.utf8)
            case UInt8(ascii: "/") where slash: out += Array(#"\/"#.utf8)
            case 0x0a: out += Array(#"\n"#.utf8)
            case 0x0d: out += Array(#"\r"#.utf8)
            case 0x09: out += Array(#"\t"#.utf8)
            case 0x08: out += Array(#"\b"#.utf8)
            case 0x0c: out += Array(#"\f"#.utf8)
            case 0..<0x20: out += Array(#"\u00"#.utf8) + [lowerHex[Int(byte >> 4)], lowerHex[Int(byte & 0xf)]]
            default: out.append(byte)
            }
        }
        return out
    }
}

/// An Aho-Corasick automaton as a complete transition table (a DFA), over
/// byte classes: bytes that occur in no pattern share class 0, which leads
/// back to the root from everywhere.
///
/// At the root it skips, as Wu-Manber does: every pattern is at least
/// `skipStride + 2` bytes long, so one that starts within the next
/// `skipStride` bytes covers the three bytes from `skipStride - 1` on, and
/// when those three occur in no pattern (`trigrams`, a hashed set that may
/// say yes wrongly but never no) none starts there and the root is still
/// right after them. Text unlike the secrets is then read one byte in
/// `skipStride` instead of every byte.
struct Automaton: Sendable {
    let byteClass: [UInt8]
    let classCount: Int
    /// `table[state * classCount + class]`: the next state.
    let table: [Int32]
    /// The longest pattern that ends at this state (0: none).
    let matchLength: [Int32]
    /// How many bytes the state stands for: the longest suffix of the input
    /// that is the beginning of some pattern.
    let depth: [Int32]
    /// How far the root may skip (0: not at all, a pattern shorter than 3).
    let skipStride: Int
    /// A bit per hash of each three bytes that occur in some pattern.
    let trigrams: [UInt64]

    static let trigramBits = 17

    @inline(__always)
    static func trigramHash(_ a: UInt8, _ b: UInt8, _ c: UInt8) -> Int {
        let packed = UInt32(a) << 16 | UInt32(b) << 8 | UInt32(c)
        return Int((packed &* 2_654_435_761) >> UInt32(32 - trigramBits))
    }

    @inline(__always)
    static func contains(_ set: UnsafeBufferPointer<UInt64>, _ a: UInt8, _ b: UInt8, _ c: UInt8) -> Bool {
        let hash = trigramHash(a, b, c)
        return set[hash >> 6] & (1 << UInt64(hash & 63)) != 0
    }

    init(patterns: [[UInt8]]) {
        let shortest = patterns.map(\.count).min() ?? 0
        skipStride = shortest >= 3 ? shortest - 2 : 0
        var trigrams = [UInt64](repeating: 0, count: (1 << Self.trigramBits) / 64)
        for pattern in patterns where pattern.count >= 3 {
            for start in 0...(pattern.count - 3) {
                let hash = Self.trigramHash(pattern[start], pattern[start + 1], pattern[start + 2])
                trigrams[hash >> 6] |= 1 << UInt64(hash & 63)
            }
        }
        self.trigrams = trigrams
        var used = [Bool](repeating: false, count: 256)
        for pattern in patterns { for byte in pattern { used[Int(byte)] = true } }
        var classes = [UInt8](repeating: 0, count: 256)
        var count = 1
        if used.allSatisfy({ $0 }) {
            // No byte is unused: each is its own class.
            classes = (0...255).map { UInt8($0) }
            count = 256
        } else {
            for byte in 0..<256 where used[byte] {
                classes[byte] = UInt8(count)
                count += 1
            }
        }
        var table = [Int32](repeating: -1, count: count)
        var terminal: [Int32] = [0]
        var depth: [Int32] = [0]
        for pattern in patterns where !pattern.isEmpty {
            var node = 0
            for byte in pattern {
                let slot = node * count + Int(classes[Int(byte)])
                if table[slot] < 0 {
                    table[slot] = Int32(depth.count)
                    depth.append(depth[node] + 1)
                    terminal.append(0)
                    table += [Int32](repeating: -1, count: count)
                }
                node = Int(table[slot])
            }
            terminal[node] = Int32(pattern.count)
        }
        // Breadth first: a state's failure state is shallower, so its row is
        // complete by the time the state's own row is filled from it.
        var fail = [Int32](repeating: 0, count: depth.count)
        var match = terminal
        var queue: [Int] = []
        for cls in 0..<count {
            if table[cls] < 0 {
                table[cls] = 0
            } else {
                queue.append(Int(table[cls]))
            }
        }
        var head = 0
        while head < queue.count {
            let node = queue[head]
            head += 1
            let failure = Int(fail[node])
            for cls in 0..<count {
                let slot = node * count + cls
                let child = table[slot]
                let fallback = table[failure * count + cls]
                if child < 0 {
                    table[slot] = fallback
                } else {
                    fail[Int(child)] = fallback
                    match[Int(child)] = max(terminal[Int(child)], match[Int(fallback)])
                    queue.append(Int(child))
                }
            }
        }
        self.byteClass = classes
        self.classCount = count
        self.table = table
        self.matchLength = match
        self.depth = depth
    }

    func next(_ state: Int32, _ byte: UInt8) -> Int32 {
        table[Int(state) * classCount + Int(byteClass[Int(byte)])]
    }
}

/// Whether an `exec` masks its command's output: `--mask` / `--no-mask`
/// when given, else `TALLYFY_VAULT_MASK` (`1` on, `0` or empty off).
package enum OutputMasking {
    package static let variable = "TALLYFY_VAULT_MASK"

    package static func requested(flag: Bool?, environment: [String: String]) throws -> Bool {
        if let flag { return flag }
        switch environment[variable] ?? "" {
        case "1": return true
        case "", "0": return false
        case let other:
            throw VaultError(.usage, "\(variable)=\(other) is not 1 or 0",
                hint: "set \(variable)=1 to mask every exec's output, or unset it; --mask and --no-mask decide for one command")
        }
    }
}

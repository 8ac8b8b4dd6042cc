#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The masker's fuzz target (`tools/fuzz mask`): the input chooses secrets,
/// an output stream made of their forms, pieces of forms and other bytes, and
/// how that stream is cut into writes. The masked result must be exactly what
/// a naive scan of the whole stream gives (every occurrence of every form,
/// overlapping ones joined, each run one `<redacted>`), with no form left in
/// it; anything else traps.
package enum MaskFuzz {
    /// Input layout: byte 0: 1…4 secrets; per secret a length byte (8…40)
    /// and that many bytes; then the stream as operations, each a byte `op`
    /// then its data: op % 4 == 0 a whole form (next byte picks it), 1 a
    /// form cut short (two bytes: which, where), 2 one chunk boundary, else
    /// `op / 4 % 16 + 1` literal bytes.
    package static func check(_ input: [UInt8]) {
        var reader = input.makeIterator()
        guard let first = reader.next() else { return }
        var secrets: [[UInt8]] = []
        for _ in 0..<(Int(first) % 4 + 1) {
            guard let length = reader.next() else { return }
            var secret: [UInt8] = []
            for _ in 0..<(Int(length) % 33 + 8) {
                guard let byte = reader.next() else { return }
                secret.append(byte)
            }
            secrets.append(secret)
        }
        let forms = secrets.reduce(into: Set<[UInt8]>()) { $0.formUnion(SecretForms.of($1)) }
        let list = forms.sorted { $0.lexicographicallyPrecedes($1) }
        guard !list.isEmpty else { return }
        var stream: [UInt8] = []
        var cuts: [Int] = []
        while stream.count < 2048, let op = reader.next() {
            switch op % 4 {
            case 0: stream += list[Int(reader.next() ?? 0) % list.count]
            case 1:
                let form = list[Int(reader.next() ?? 0) % list.count]
                stream += form.prefix(Int(reader.next() ?? 0) % form.count)
            case 2: cuts.append(stream.count)
            default:
                for _ in 0..<(Int(op) / 4 % 16 + 1) { if let byte = reader.next() { stream.append(byte) } }
            }
        }
        var masker = OutputMasker(secrets: secrets)
        var out: [UInt8] = []
        var start = 0
        for cut in cuts + [stream.count] where cut >= start {
            out += masker.feed(Array(stream[start..<cut]))
            start = cut
        }
        out += masker.finish()
        if out != reference(stream, forms: forms) { fatalError("masker output differs from the reference") }
        // What was left as it was holds no form. (A form can appear across
        // a marker's own bytes, "<<<<<<<" then "<redacted>" for a secret of
        // eight "<": that is the marker, not the secret.)
        for piece in unmasked(stream, forms: forms) {
            for form in list where contains(Array(piece), form) { fatalError("a form got through the masker") }
        }
    }

    /// Every occurrence of every form in `input`, overlapping ones joined,
    /// each run replaced by one marker.
    package static func reference(_ input: [UInt8], forms: Set<[UInt8]>) -> [UInt8] {
        var out: [UInt8] = []
        var cursor = 0
        for run in runs(input, forms: forms) {
            out += input[cursor..<run.start] + OutputMasker.marker
            cursor = run.end
        }
        return out + input[cursor...]
    }

    /// The pieces of `input` between the runs `reference` replaces.
    static func unmasked(_ input: [UInt8], forms: Set<[UInt8]>) -> [ArraySlice<UInt8>] {
        var pieces: [ArraySlice<UInt8>] = []
        var cursor = 0
        for run in runs(input, forms: forms) {
            pieces.append(input[cursor..<run.start])
            cursor = run.end
        }
        return pieces + [input[cursor...]]
    }

    /// The runs of overlapping occurrences of forms, in order.
    static func runs(_ input: [UInt8], forms: Set<[UInt8]>) -> [(start: Int, end: Int)] {
        let byFirstByte = Dictionary(grouping: forms.filter { !$0.isEmpty }) { $0[0] }
        var runs: [(start: Int, end: Int)] = []
        for start in input.indices {
            var longest = 0
            for form in byFirstByte[input[start]] ?? [] where form.count > longest && start + form.count <= input.count {
                if input[start..<(start + form.count)].elementsEqual(form) { longest = form.count }
            }
            guard longest > 0 else { continue }
            if let last = runs.last, start < last.end {
                runs[runs.count - 1].end = max(last.end, start + longest)
            } else {
                runs.append((start, start + longest))
            }
        }
        return runs
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard needle.count <= haystack.count else { return false }
        return (0...(haystack.count - needle.count)).contains { haystack[$0..<($0 + needle.count)].elementsEqual(needle) }
    }
}

extension FuzzEntry {
    /// The `mask` target: `MaskFuzz.check`, which traps on a finding.
    @discardableResult
    package static func mask(_ data: Data) -> Outcome {
        MaskFuzz.check([UInt8](data))
        return Outcome(expect: "success", stage: "mask", message: "")
    }
}

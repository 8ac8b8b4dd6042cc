import Foundation
import Testing

@testable import TallyfyVaultCore

/// `exec --mask`'s masker: every form of every secret is replaced, across any
/// chunking, and nothing else changes.
@Suite struct OutputMaskerTests {
    static let marker = OutputMasker.marker
    /// A JWT-shaped made-up token (not a real one).
    static let token = Array("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJlLXBhcnQtZm9yLXRlc3Rz".utf8)
    /// An opaque one with the characters that percent and JSON encoding change.
    static let awkward = Array("k3y/with+slash=\"quote\\back\u{1}ctl".utf8)

    /// Everything out of one masker fed `chunks`, then finished.
    static func masked(_ chunks: [[UInt8]], secrets: [[UInt8]]) -> [UInt8] {
        var masker = OutputMasker(secrets: secrets)
        var out: [UInt8] = []
        for chunk in chunks { out += masker.feed(chunk) }
        return out + masker.finish()
    }

    /// What masking must give, worked out naively over the whole input: every
    /// occurrence of every form, overlapping ones joined, each run one marker.
    static func reference(_ input: [UInt8], forms: Set<[UInt8]>) -> [UInt8] {
        MaskFuzz.reference(input, forms: forms)
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard needle.count <= haystack.count else { return false }
        return (0...(haystack.count - needle.count)).contains { haystack[$0..<($0 + needle.count)].elementsEqual(needle) }
    }

    @Test func theFormsAreThoseProgramsPrint() {
        let forms = SecretForms.of(Self.awkward)
        let data = Data(Self.awkward)
        #expect(forms.contains(Self.awkward))
        #expect(forms.contains(Array(data.base64EncodedString().utf8)))
        let url = data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        #expect(forms.contains(Array(url.utf8)))
        #expect(forms.contains(Array(url.trimmingCharacters(in: ["="]).utf8)))
        #expect(forms.contains(Array(#"k3y%2Fwith%2Bslash%3D%22quote%5Cback%01ctl"#.utf8)))
        #expect(forms.contains(Array(#"k3y%2fwith%2bslash%3d%22quote%5cback%01ctl"#.utf8)))
        // JSONSerialization writes the escapes a JSON library writes.
        let json = try! JSONSerialization.data(withJSONObject: [String(decoding: Self.awkward, as: UTF8.self)])
        let inner = Array(json.dropFirst(2).dropLast(2))  // ["…"]
        #expect(forms.contains(inner), "JSON form \(String(decoding: inner, as: UTF8.self))")
        #expect(forms.contains(Array(#"k3y\/with+slash=\"quote\\back\u0001ctl"#.utf8)))
        #expect(forms.allSatisfy { $0.count >= SecretForms.minimumLength })
    }

    @Test(arguments: [0, 1])
    func eachFormIsReplacedAndTheTextAroundKept(which: Int) {
        let secret = [Self.token, Self.awkward][which]
        for form in SecretForms.of(secret) {
            let input = Array("before ".utf8) + form + Array(" after\n".utf8)
            let expected = Array("before ".utf8) + Self.marker + Array(" after\n".utf8)
            #expect(Self.masked([input], secrets: [secret]) == expected, "form \(String(decoding: form, as: UTF8.self))")
        }
    }

    /// Base64 of a longer blob the secret sits in, at every alignment: the
    /// characters that depend on the secret alone are replaced, the rest
    /// (which also depend on the neighbouring bytes) are kept.
    @Test func insideALongerBase64StringAtEachAlignment() {
        for before in 0..<6 {
            for after in 0..<4 {
                let blob = [UInt8](repeating: 0xA5, count: before) + Self.token + [UInt8](repeating: 0x5A, count: after)
                for encoded in [Data(blob).base64EncodedString(), Data(blob).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")] {
                    let chars = Array(encoded.utf8)
                    let first = (8 * before + 5) / 6
                    let last = 8 * (before + Self.token.count) / 6
                    let expected = Array(chars[..<first]) + Self.marker + Array(chars[last...])
                    let got = Self.masked([chars], secrets: [Self.token])
                    #expect(got.count <= expected.count && got == expected || (after == 0 && got == Array(chars[..<first]) + Self.marker),
                        "before \(before), after \(after)")
                }
            }
        }
    }

    @Test func bearerInAnyCaseKeepsItsWordAndLosesTheToken() {
        for word in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let input = Array("Authorization: \(word) ".utf8) + Self.token + Array("\r\n".utf8)
            #expect(Self.masked([input], secrets: [Self.token]) == Array("Authorization: \(word) <redacted>\r\n".utf8))
        }
    }

    @Test func aSecretSplitAtEveryOffsetAcrossTwoFeeds() {
        for secret in [Self.token, Self.awkward] {
            for form in SecretForms.of(secret) {
                let input = Array("log: ".utf8) + form + Array(" done".utf8)
                let expected = Self.reference(input, forms: SecretForms.of(secret))
                for cut in 0...input.count {
                    var masker = OutputMasker(secrets: [secret])
                    let first = masker.feed(Array(input[..<cut]))
                    // Nothing of the form is out before the form is complete.
                    #expect(first.count <= 5 || first.starts(with: Array("log: ".utf8) + Self.marker))
                    #expect(masker.held <= form.count - 1 + 5)
                    let all = first + masker.feed(Array(input[cut...])) + masker.finish()
                    #expect(all == expected, "cut at \(cut)")
                }
            }
        }
    }

    @Test func threeWaySplits() {
        let secret = Array("tok-0123456789abcdefXYZ".utf8)
        let input = Array("a ".utf8) + secret + Array(" b ".utf8) + Array(Data(secret).base64EncodedString().utf8) + Array(" c".utf8)
        let expected = Array("a <redacted> b <redacted> c".utf8)
        for i in 0...input.count {
            for j in i...input.count {
                let got = Self.masked([Array(input[..<i]), Array(input[i..<j]), Array(input[j...])], secrets: [secret])
                #expect(got == expected, "cuts at \(i), \(j)")
            }
        }
    }

    @Test func overlappingSecretsBecomeOneMarkerAndTouchingOnesTwo() {
        let one = Array("abcdefgh12345678".utf8)
        let two = Array("12345678ijklmnop".utf8)
        let inner = Array("cdefgh1234".utf8)
        let secrets = [one, two, inner]
        #expect(Self.masked([Array("x abcdefgh12345678ijklmnop y".utf8)], secrets: secrets) == Array("x <redacted> y".utf8))
        #expect(Self.masked([Array("x ".utf8) + one + two + Array(" y".utf8)], secrets: secrets) == Array("x <redacted><redacted> y".utf8))
        #expect(Self.masked([Array("x zcdefgh1234z y".utf8)], secrets: secrets) == Array("x z<redacted>z y".utf8))
        // Found by the fuzzer: a run that touches a marker already out is held,
        // since a later match may overlap both (then they are one marker).
        let bridge = [Array("0123456789".utf8), Array("xxxxxxxx".utf8), Array("789xxxxxxxxyy".utf8)]
        let text = Array("0123456789xxxxxxxxyy!".utf8)
        #expect(Self.masked(text.map { [$0] }, secrets: bridge) == Self.marker + Array("!".utf8))
        #expect(Self.masked([Array(text[..<12]), Array(text[12...])], secrets: bridge) == Self.marker + Array("!".utf8))
        // The same text one byte at a time.
        let input = Array("x abcdefgh12345678ijklmnop y abcdefgh12345678".utf8)
        #expect(Self.masked(input.map { [$0] }, secrets: secrets) == Array("x <redacted> y <redacted>".utf8))
    }

    @Test func binaryAndInvalidUTF8PassUnchanged() {
        var random = SeededRandom(seed: 7)
        let binary = (0..<100_000).map { _ in UInt8.random(in: 0...255, using: &random) }
        #expect(Self.masked(Self.chunked(binary, using: &random), secrets: [Self.token, Self.awkward]) == binary)
        let invalid: [UInt8] = [0xff, 0xfe, 0x80, 0xc3] + Self.token + [0xed, 0xa0, 0x80, 0x00, 0x0a]
        #expect(Self.masked([invalid], secrets: [Self.token]) == [0xff, 0xfe, 0x80, 0xc3] + Self.marker + [0xed, 0xa0, 0x80, 0x00, 0x0a])
        let everyByte = (0...255).map { UInt8($0) }
        #expect(Self.masked([everyByte], secrets: [everyByte]) == Self.marker)
        #expect(Self.masked([Array("plain".utf8)], secrets: []) == Array("plain".utf8))
    }

    @Test func aSecretAddedMidStreamIsMaskedFromThen() {
        let renewed = Array("renewed-token-value-0123456789".utf8)
        var masker = OutputMasker(secrets: [Self.token])
        var out = masker.feed(Array("old ".utf8) + Self.token + Array(" new ".utf8) + renewed.prefix(10))
        // Not yet known, the renewed token's start is text like any other...
        #expect(out == Array("old <redacted> new ".utf8) + Array(renewed.prefix(10)))
        let beforeAdd = out.count
        out += masker.add([renewed])
        out += masker.feed(Array(renewed.dropFirst(10)) + Array(" and ".utf8) + renewed + Array(" ".utf8) + Self.token)
        out += masker.finish()
        // ...so that occurrence, begun before the masker knew it, stays (the
        // supervisor adds a renewed token before the child can see it), but
        // every later one is masked.
        let tail = Array(out[beforeAdd...])
        #expect(tail == Array(renewed.dropFirst(10)) + Array(" and <redacted> <redacted>".utf8))
    }

    /// Bytes held as the start of a known secret are scanned again for the
    /// new one, and the state goes on from there.
    @Test func aSecretAddedWhileBytesAreHeldIsFoundInThem() {
        var masker = OutputMasker(secrets: [Array("abcdefgh12345678".utf8)])
        #expect(masker.feed(Array("> abcdefgh1234567".utf8)) == Array("> ".utf8))
        #expect(masker.add([Array("bcdefgh12345".utf8), Array("abcdefghZZZZ".utf8)]) == [])
        #expect(masker.feed(Array("X abcdefgh".utf8)) == Array("a<redacted>67X ".utf8))
        #expect(masker.feed(Array("ZZZZ!".utf8)) == Array("<redacted>!".utf8))
        #expect(masker.feed(Array("abcdefgh12345678".utf8)) == Self.marker, "the first secret is still masked")
    }

    @Test func aHeldPrefixIsHeldOnlyWhileItCanStillBecomeASecret() {
        var masker = OutputMasker(secrets: [Self.token])
        #expect(masker.feed(Array("prompt> ".utf8)) == Array("prompt> ".utf8))
        #expect(masker.held == 0)
        #expect(masker.feed(Array(Self.token.prefix(20))) == [])
        #expect(masker.held == 20)
        // A byte that rules the prefix out releases it at once.
        #expect(masker.feed([UInt8(ascii: "!")]) == Array(Self.token.prefix(20)) + [UInt8(ascii: "!")])
        #expect(masker.feed(Array(Self.token.prefix(20))) == [])
        #expect(masker.finish() == Array(Self.token.prefix(20)), "the end of the stream releases it")
    }

    /// Random secrets, random text made of their forms and of filler, cut
    /// into random chunks: the output is the naive reference's, and no form
    /// of any secret is in it.
    @Test func randomChunkingsAndSecretSets() {
        var random = SeededRandom(seed: 20)
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./+=\" %\\\n".utf8)
        for round in 0..<300 {
            let secrets: [[UInt8]] = (0..<Int.random(in: 1...4, using: &random)).map { _ in
                (0..<Int.random(in: 8...40, using: &random)).map { _ in alphabet.randomElement(using: &random)! }
            }
            let forms = secrets.reduce(into: Set<[UInt8]>()) { $0.formUnion(SecretForms.of($1)) }
            let formList = Array(forms)
            var input: [UInt8] = []
            for _ in 0..<Int.random(in: 1...12, using: &random) {
                switch Int.random(in: 0..<4, using: &random) {
                case 0: input += formList.randomElement(using: &random)!
                case 1:  // a form cut short: must come out unchanged unless it completes something
                    let form = formList.randomElement(using: &random)!
                    input += form.prefix(Int.random(in: 0..<form.count, using: &random))
                case 2: input += (0..<Int.random(in: 0...30, using: &random)).map { _ in alphabet.randomElement(using: &random)! }
                default: input += (0..<Int.random(in: 0...30, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                }
            }
            let got = Self.masked(Self.chunked(input, using: &random), secrets: secrets)
            let expected = Self.reference(input, forms: forms)
            #expect(got == expected, "round \(round)")
            #expect(!forms.contains { Self.contains(got, $0) }, "round \(round): a form got through")
        }
    }

    /// A real token's length (its forms are hundreds of bytes, so the masker
    /// skips through text unlike them): forms and pieces of forms among log
    /// lines, in chunks around the skip's stride, come out as the reference's.
    @Test func longTokensAmongLogLinesWhereTheMaskerSkips() {
        var random = SeededRandom(seed: 21)
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_".utf8)
        for round in 0..<40 {
            let token = Array("eyJhbGciOiJSUzI1NiJ9.".utf8) + (0..<Int.random(in: 200...700, using: &random)).map { _ in alphabet.randomElement(using: &random)! }
            let forms = SecretForms.of(token)
            let formList = Array(forms)
            var input: [UInt8] = []
            for line in 0..<200 {
                input += Array("2026-12-03T10:00:\(line % 60)Z INFO request id=\(line) path=/api/me status=200\n".utf8)
                switch Int.random(in: 0..<10, using: &random) {
                case 0: input += formList.randomElement(using: &random)!
                case 1:
                    let form = formList.randomElement(using: &random)!
                    input += form.prefix(Int.random(in: 0..<form.count, using: &random))
                default: break
                }
            }
            var chunks: [[UInt8]] = []
            var index = 0
            while index < input.count {
                let size = min(input.count - index, Int.random(in: 1...3000, using: &random))
                chunks.append(Array(input[index..<(index + size)]))
                index += size
            }
            let got = Self.masked(chunks, secrets: [token])
            #expect(got == Self.reference(input, forms: forms), "round \(round)")
        }
    }

    static func chunked(_ input: [UInt8], using random: inout SeededRandom) -> [[UInt8]] {
        var chunks: [[UInt8]] = []
        var index = 0
        while index < input.count {
            let size = Int.random(in: 0...max(1, min(input.count - index, Bool.random(using: &random) ? 3 : 4096)), using: &random)
            chunks.append(Array(input[index..<(index + size)]))
            index += size
        }
        return chunks
    }
}

/// SplitMix64: reproducible random tests.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Durations as README.md writes them: `90s`, `45m`, `48h`, `7d`, or a
/// sequence such as `1d12h`.
package enum DurationText {
    private static let units: [Character: TimeInterval] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800]

    /// Seconds in `text`; throws `.usage` with the accepted forms otherwise.
    package static func parse(_ text: String) throws -> TimeInterval {
        var total: TimeInterval = 0
        var digits = ""
        var sawUnit = false
        for character in text {
            if character.isASCII && character.isNumber {
                digits.append(character)
            } else if let unit = units[character], let number = Double(digits) {
                total += number * unit
                digits = ""
                sawUnit = true
            } else {
                throw invalid(text)
            }
        }
        guard digits.isEmpty, sawUnit, total <= 3650 * 86400 else { throw invalid(text) }
        return total
    }

    private static func invalid(_ text: String) -> VaultError {
        VaultError(.usage, "\"\(text)\" is not a duration", hint: "write it as a number and a unit: 90s, 45m, 48h or 7d")
    }

    /// A short human form of `seconds`: "6d 23h", "45m", "expired 2h ago" is
    /// left to callers. Rounds down to the two largest units.
    package static func format(_ seconds: TimeInterval) -> String {
        // Bounded so that no difference of dates can trap the conversion.
        var remaining = Int(min(max(seconds.isNaN ? 0 : seconds, -1e15), 1e15).rounded(.down))
        if remaining < 60 { return "\(max(remaining, 0))s" }
        var parts: [String] = []
        for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60)] where remaining >= size {
            parts.append("\(remaining / size)\(unit)")
            remaining %= size
            if parts.count == 2 { break }
        }
        return parts.joined(separator: " ")
    }
}

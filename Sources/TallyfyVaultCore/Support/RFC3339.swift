#if canImport(Glibc)
    import Glibc
#endif

/// RFC 3339 dates in UTC, as the child's variables, messages and the audit
/// log write them: `2026-12-06T04:25:05Z`, or with milliseconds
/// `2026-12-06T04:25:05.123Z`.
enum RFC3339 {
    static func text(seconds whole: Int, milliseconds: Int32? = nil) -> String {
        var seconds = time_t(whole)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        // Built by hand: String(format:) goes through CVarArg's dynamic
        // casts, which cost more than the rest of this on the exec fast path.
        func digits(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        let fraction = milliseconds.map { "." + digits($0, 3) } ?? ""
        return "\(digits(parts.tm_year + 1900, 4))-\(digits(parts.tm_mon + 1, 2))-\(digits(parts.tm_mday, 2))"
            + "T\(digits(parts.tm_hour, 2)):\(digits(parts.tm_min, 2)):\(digits(parts.tm_sec, 2))\(fraction)Z"
    }
}

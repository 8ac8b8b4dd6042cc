/// Character classes the library needs, written on the standard library's
/// Unicode properties so the core module needs only FoundationEssentials
/// (Foundation's `CharacterSet` would link ICU into the `exec` launcher).
extension Unicode.Scalar {
    /// A control character (Unicode general category Cc).
    package var isControl: Bool { properties.generalCategory == .control }

    /// White space or a line break.
    package var isWhitespaceOrNewline: Bool { properties.isWhitespace }
}

extension String {
    /// Without leading and trailing white space and line breaks.
    package var trimmedWhitespace: String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.isWhitespaceOrNewline }),
            let last = scalars.lastIndex(where: { !$0.isWhitespaceOrNewline })
        else { return "" }
        return String(scalars[first...last])
    }
}

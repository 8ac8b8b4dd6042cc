import Foundation

/// Recognises a plain `exec` invocation without ArgumentParser.
///
/// `exec` is the hot path, and in a binary this size ArgumentParser's
/// reflection costs about ten milliseconds at startup (its dynamic casts scan
/// the whole protocol-conformance table), more than all the rest of `exec`.
/// Only the exact grammar below is taken here:
///
///     [global options] exec [global or exec options] -- COMMAND [ARGS…]
///
/// with options written `--name value` or `--name=value`. Anything else (help,
/// an unknown or misspelt option, a missing `--`) returns `nil` and goes
/// through ArgumentParser, which then gives the same result or its message.
enum ExecFastPath {
    struct Invocation {
        var context = CommandContext()
        var selection = TokenSelection()
        var command: [String] = []
    }

    private static let globalOptions: Set<String> = ["--vault", "--profile", "--key-file", "--passphrase-file"]
    private static let execOptions: Set<String> = ["--user", "--min-ttl"]

    static func parse(_ arguments: [String]) -> Invocation? {
        guard let terminator = arguments.firstIndex(of: "--"), terminator + 1 < arguments.count else { return nil }
        var invocation = Invocation()
        invocation.command = Array(arguments[(terminator + 1)...])
        var sawExec = false
        var index = 0
        while index < terminator {
            let word = arguments[index]
            index += 1
            if word == "exec" && !sawExec {
                sawExec = true
                continue
            }
            if word == "--no-refresh" && sawExec {
                invocation.selection.noRefresh = true
                continue
            }
            var name = word
            let value: String
            if let equals = word.firstIndex(of: "="), word.hasPrefix("--") {
                name = String(word[..<equals])
                value = String(word[word.index(after: equals)...])
            } else {
                guard index < terminator, !arguments[index].hasPrefix("-") else { return nil }
                value = arguments[index]
                index += 1
            }
            guard globalOptions.contains(name) || (sawExec && execOptions.contains(name)) else { return nil }
            switch name {
            case "--vault": invocation.context.vault = value
            case "--profile": invocation.context.profile = value
            case "--key-file": invocation.context.keyFile = value
            case "--passphrase-file": invocation.context.passphraseFile = value
            case "--user": invocation.selection.user = value
            default: invocation.selection.minTTL = value
            }
        }
        return sawExec ? invocation : nil
    }
}

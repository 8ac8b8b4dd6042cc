import ArgumentParser

/// Better words for the parse errors a newcomer meets first: a mistyped
/// command (`exce`, `user`), another tool's verb (`users add`), and `exec`
/// without the `--` before the command. ArgumentParser already suggests
/// near option names; for command words it only says "unexpected argument".
enum CommandSuggestion {
    struct Advice: Equatable {
        let message: String
        let hint: String
    }

    /// The global options that take a value (`GlobalOptions`), so that their
    /// value is not read as a command word.
    static let globalOptionsWithValue: Set<String> = ["--vault", "--profile", "--key-file", "--passphrase-file"]

    /// Verbs of other tools and the ones used here; the first of a group that
    /// is a command of the group being typed into is suggested.
    static let synonyms: [[String]] = [
        ["create", "add", "new", "set"],
        ["remove", "forget", "rm", "delete", "del"],
        ["list", "ls"],
        ["show", "get", "view", "cat"],
    ]

    /// Advice for `arguments` (argv without the program), given the parse
    /// error ArgumentParser reported for them; nil when the error is not one
    /// of these (it is then printed as it is).
    static func advice(for arguments: [String], parserMessage: String) -> Advice? {
        var command: ParsableCommand.Type = TallyfyVaultCommand.self
        var path: [String] = []
        var index = 0
        while index < arguments.count {
            let word = arguments[index]
            if word == "--" { break }
            if word.hasPrefix("-") {
                // An option whose arity is unknown here ends the walk: the
                // next word may be its value.
                if word.contains("=") { index += 1; continue }
                guard globalOptionsWithValue.contains(word) else { break }
                index += 2
                continue
            }
            let subcommands = command.configuration.subcommands
            guard !subcommands.isEmpty else { break }
            if let next = subcommands.first(where: { $0._commandName == word || $0.configuration.aliases.contains(word) }) {
                command = next
                path.append(word)
                index += 1
                continue
            }
            if path.isEmpty && word == "help" { return nil }
            let names = subcommands.map { $0._commandName }
            let typed = (path + [word]).joined(separator: " ")
            let help = (["tallyfy-vault help"] + path).joined(separator: " ")
            guard let better = nearest(to: word, among: names) ?? synonym(of: word, among: names) else {
                return Advice(message: "unknown command '\(typed)'",
                    hint: "see `\(help)` for the commands: \(names.joined(separator: ", "))")
            }
            return Advice(message: "unknown command '\(typed)'; did you mean '\((path + [better]).joined(separator: " "))'?",
                hint: "see `\(help)` for the commands")
        }
        if command == Exec.self, parserMessage.lowercased().contains("unexpected argument") {
            let words = quoted(in: parserMessage)
            let example = words.isEmpty ? "./sync" : words.joined(separator: " ")
            return Advice(message: "unexpected argument '\(words.first ?? "")': put `--` before the command",
                hint: "write `tallyfy-vault exec [OPTIONS] -- \(example)`; everything after `--` is the command, passed exactly")
        }
        return nil
    }

    /// The name closest to `word` by edit distance (a swap of two neighbours
    /// counts once), if close enough to be a typo: one edit for short words,
    /// two for longer ones; else the one name `word` starts.
    static func nearest(to word: String, among names: [String]) -> String? {
        let allowed = word.count <= 4 ? 1 : 2
        let scored = names.map { ($0, distance(word, $0)) }.filter { $0.1 <= allowed }
        if let best = scored.min(by: { $0.1 < $1.1 }) { return best.0 }
        let started = names.filter { word.count >= 3 && $0.hasPrefix(word) }
        return started.count == 1 ? started[0] : nil
    }

    static func synonym(of word: String, among names: [String]) -> String? {
        guard let group = synonyms.first(where: { $0.contains(word) }) else { return nil }
        return group.first { names.contains($0) }
    }

    /// Optimal string alignment distance: insertions, deletions,
    /// substitutions and swaps of adjacent characters.
    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
        var d = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in 0...a.count { d[i][0] = i }
        for j in 0...b.count { d[0][j] = j }
        for i in 1...a.count {
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
                }
            }
        }
        return d[a.count][b.count]
    }

    /// The 'quoted' words of an ArgumentParser message ("2 unexpected
    /// arguments: 'ls', 'x'").
    static func quoted(in message: String) -> [String] {
        let parts = message.split(separator: "'", omittingEmptySubsequences: false)
        return stride(from: 1, to: parts.count - 1, by: 2).map { String(parts[$0]) }
    }
}

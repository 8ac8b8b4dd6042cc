import ArgumentParser
import Foundation
import TallyfyVault

/// `audit show|verify|find`: read this machine's audit log of the vault.
struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read this machine's audit log of the vault: every token handed out and every change, never a secret.",
        discussion: """
            The log is TALLYFY_VAULT_AUDIT_FILE, else $XDG_STATE_HOME/tallyfy-vault/audit/<vault id>.log. \
            TALLYFY_VAULT_AUDIT=off writes none; =required refuses (74) to hand out or change anything it can't record.
            """,
        subcommands: [Show.self, Verify.self, Find.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the records, oldest first (needs no key when this machine has opened the vault before).")
        @OptionGroup var global: GlobalOptions
        @Option(help: ArgumentHelp("Only records from the last D (e.g. 1h, 7d) or since an RFC 3339 time.", valueName: "D"))
        var since: String?
        @Option(help: ArgumentHelp("Only records of this command (e.g. exec, token, \"credentials set\").", valueName: "OP"))
        var op: String?
        @Option(help: "text (a table) or json (an array of records).") var format: FormatTextJSON = .text

        func run() async throws {
            let records = try await AuditQuery.reader(global.context, needsKey: false).reader.records(
                since: try since.map(AuditQuery.cutoff), op: op)
            try AuditQuery.print(records, format: format)
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every record's MAC, order and link, and that the log reaches the head sealed at the vault's last write (0 intact, 65 not).")
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let (reader, vault) = try await AuditQuery.reader(global.context, needsKey: true)
            let head = vault!.content.auditHeads?[AuditTrail.headName(logPath: reader.log.path)]
            let verdict = try reader.verify(key: vault!.auditKey, head: head)
            if let problem = verdict.problem {
                throw VaultError(.corrupt, "the audit log \(reader.log.path) does not verify: \(problem)",
                    hint: "the records before it are intact; keep a copy of the log as it is for investigation")
            }
            let sealed = head.map { "; reaches the head the vault's last write sealed (record \($0.seq))" } ?? ""
            Output.line("audit log \(reader.log.path): \(verdict.records) records, intact\(sealed)")
        }
    }

    struct Find: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the records of one token, read from standard input (its keyed fingerprint is compared, as the log holds no token).")
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Read the token from standard input (required: a token never goes on the command line).")
        var token = false
        @Option(help: "text or json.") var format: FormatTextJSON = .text

        func run() async throws {
            guard token else {
                throw VaultError(.usage, "audit find needs --token, with the token on standard input",
                    hint: "printf '%s' \"$TOKEN\" | tallyfy-vault audit find --token")
            }
            let given = (readLine(strippingNewline: true) ?? "").trimmingCharacters(in: .whitespaces)
            guard !given.isEmpty else {
                throw VaultError(.usage, "no token on standard input", hint: "printf '%s' \"$TOKEN\" | tallyfy-vault audit find --token")
            }
            let (reader, vault) = try await AuditQuery.reader(global.context, needsKey: true)
            try AuditQuery.print(try reader.records(withToken: vault!.auditKey.fingerprint(of: given)), format: format)
        }
    }
}

/// What the three subcommands share: finding the log, printing records.
enum AuditQuery {
    /// The log of the vault `context` names; unlocked (normal unlock
    /// sources) when the key is needed or the log can't be named without it.
    static func reader(_ context: CommandContext, needsKey: Bool) async throws -> (reader: AuditReader, vault: UnlockedVault?) {
        let store = context.store
        if !needsKey, let path = store.audit.logPath(vaultID: store.audit.vaultID(forLocation: store.locationText)) {
            return (try existing(path), nil)
        }
        let (_, vault) = try await context.pass(secrets: context.secretsToOpen)
        guard let path = store.audit.logPath(vaultID: vault.content.id) else {
            throw VaultError(.configuration, "no audit log can be named for this vault",
                hint: "set TALLYFY_VAULT_AUDIT_FILE, or HOME / XDG_STATE_HOME")
        }
        return (try existing(path), vault)
    }

    private static func existing(_ path: String) throws -> AuditReader {
        let reader = AuditReader(log: AuditLog(path: path))
        guard !reader.log.files().isEmpty else {
            throw VaultError(.notFound, "there is no audit log at \(path) yet",
                hint: "records are written by the commands that hand out tokens or change the vault on this machine")
        }
        return reader
    }

    /// `--since`: a duration back from now, or an RFC 3339 time.
    static func cutoff(_ text: String) throws -> Date {
        if let date = ISO8601DateFormatter().date(from: text) { return date }
        let withFraction = ISO8601DateFormatter()
        withFraction.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = withFraction.date(from: text) { return date }
        return Date().addingTimeInterval(-(try DurationText.parse(text)))
    }

    static func print(_ records: [AuditRecord], format: FormatTextJSON) throws {
        switch format {
        case .json:
            Output.line(try Output.json(records))
        case .text:
            var rows = [["TIME", "OP", "EVENT", "PROFILE", "USER", "TOKEN", "RESULT", "PID", "PARENT", "UID", "TTY", "HOST"]]
            for r in records {
                rows.append([r.time, r.op, r.event + (r.change.map { " (\($0))" } ?? ""), r.profile ?? "-", r.user ?? "-",
                    r.token.map { String($0.prefix(12)) } ?? "-", r.result, String(r.pid), r.parent ?? "-", String(r.uid), r.tty ?? "-", r.host])
            }
            Output.line(Table.render(rows))
        }
    }
}

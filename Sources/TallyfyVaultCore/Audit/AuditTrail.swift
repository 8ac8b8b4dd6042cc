#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif
import Synchronization

/// Where and whether this process writes audit records, and the writing.
///
/// Records are written at two places only, so nothing hands out a token or
/// changes the vault without one: `TokenBroker`'s hand-out (every consumer:
/// the launcher's `exec`, the CLI's `exec`/`token`/`export`, the agent's
/// answers, keep-fresh renewals) and `VaultStore`'s open and write (every
/// change, a refused unlock, a refused or accepted rollback).
///
/// - `TALLYFY_VAULT_AUDIT=off`: nothing is written (`status` says so);
///   `required`: a record that can't be written fails the command (74)
///   before the token is handed out or the vault written; unset or `on`: it
///   is written when it can be, else one warning line and the command goes on.
/// - `TALLYFY_VAULT_AUDIT_FILE`: the log; else
///   `$XDG_STATE_HOME/tallyfy-vault/audit/<vault id>.log`
///   (`~/.local/state/…` without `XDG_STATE_HOME`).
package struct AuditTrail: Sendable {
    package enum Mode: String, Sendable {
        case on, off, required
    }

    package let mode: Mode
    /// A value of `TALLYFY_VAULT_AUDIT` that is none of the above: every record attempt fails (64).
    let badMode: String?
    let explicitFile: String?
    let folder: String?
    let ci: String?
    /// The profile the command names, for records of changes.
    package var profile: String?

    package static let modeVariable = "TALLYFY_VAULT_AUDIT"
    package static let fileVariable = "TALLYFY_VAULT_AUDIT_FILE"

    /// The command as typed, for every record this process writes: the CLI
    /// sets it once it has parsed its command line, the launcher to `exec`.
    /// A library caller that sets nothing is named by its program.
    nonisolated(unsafe) package static var operation: String = ""

    private static var op: String {
        if !operation.isEmpty { return operation }
        let name = CommandLine.arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? ""
        return name.isEmpty ? "library" : name
    }

    package init(environment: [String: String]) {
        let value = environment[Self.modeVariable] ?? ""
        if value.isEmpty {
            mode = .on
            badMode = nil
        } else if let known = Mode(rawValue: value) {
            mode = known
            badMode = nil
        } else {
            mode = .required
            badMode = value
        }
        if let file = environment[Self.fileVariable], !file.isEmpty {
            explicitFile = file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file
        } else {
            explicitFile = nil
        }
        if let state = environment["XDG_STATE_HOME"], state.hasPrefix("/") {
            folder = state + "/tallyfy-vault/audit"
        } else if let home = HomeFolder.path(environment: environment) {
            folder = home + "/.local/state/tallyfy-vault/audit"
        } else {
            folder = nil
        }
        ci = AuditRequester.ciHint(environment)
    }

    /// The log of the vault named `id` on this machine.
    package func logPath(vaultID id: String?) -> String? {
        if let explicitFile { return explicitFile }
        guard let folder, let id, Self.isName(id) else { return nil }
        return "\(folder)/\(id).log"
    }

    /// What `status` says of the audit log.
    package func describe(vaultID: String?) -> String {
        if let badMode { return "\(Self.modeVariable)=\(badMode) is not a known setting (off, required)" }
        guard mode != .off else { return "off (\(Self.modeVariable)=off)" }
        let path = logPath(vaultID: vaultID) ?? (folder.map { "\($0)/<vault id>.log" } ?? "none (no home folder)")
        return path + (mode == .required ? " (required)" : "")
    }

    /// What the vault's sealed head of this machine's log is keyed by.
    package static func headName(logPath: String) -> String {
        "\(AuditRequester.host) \(logPath)"
    }

    // MARK: - The process's key

    /// The audit key and vault id of the vault this process last opened:
    /// learned at every open (`VaultStore.opened`), so a hand-out or a
    /// failure recorded later in the command uses it without another open.
    /// With the profile the opening store named, for a failure's record.
    private static let session = Mutex<(id: String?, key: AuditKey, profile: String?)?>(nil)

    package static func learn(_ vault: UnlockedVault, profile: String?) {
        let entry = (id: vault.content.id, key: vault.auditKey, profile: profile)
        session.withLock { $0 = entry }
    }

    /// Drops the key (the agent, when it forgets the vault's key).
    package static func forget() {
        session.withLock { $0 = nil }
    }

    package static var learned: (id: String?, key: AuditKey, profile: String?)? { session.withLock { $0 } }

    // MARK: - Recording

    /// What a record says, beyond who and when.
    package struct Entry: Sendable {
        var event: String
        var profile: String?
        var user: String?
        var token: String?
        var change: String?
        var result = "ok"
        var requester: AuditRequester?

        package init(event: String, profile: String? = nil, user: String? = nil, token: String? = nil, change: String? = nil,
            result: String = "ok", requester: AuditRequester? = nil)
        {
            self.event = event
            self.profile = profile
            self.user = user
            self.token = token
            self.change = change
            self.result = result
            self.requester = requester
        }
    }

    /// A token handed out: recorded before the caller may hand it out.
    /// Throws only in `required` mode (74), or for a bad mode (64).
    package func handOut(_ grant: TokenGrant, requester: AuditRequester? = nil) throws {
        guard mode != .off || badMode != nil else { return }
        let learned = Self.learned
        try record(Entry(event: "hand-out", profile: grant.profile, user: grant.user, token: learned?.key.fingerprint(of: grant.token),
            requester: requester), key: learned?.key, vaultID: learned?.id)
    }

    /// Writes `entry` to this vault's log, MACed with `key` (`nil`: a record
    /// without a MAC, for events that have no key).
    package func record(_ entry: Entry, key: AuditKey?, vaultID: String?) throws {
        if let badMode {
            throw VaultError(.usage, "\(Self.modeVariable)=\(badMode) is not a setting this release knows",
                hint: "use \(Self.modeVariable)=off, =required, or leave it unset")
        }
        guard mode != .off else { return }
        guard let path = logPath(vaultID: vaultID) else {
            return try trouble(VaultError(.io, "no audit log can be named for this vault (no vault id yet, or no home folder)",
                hint: "set TALLYFY_VAULT_AUDIT_FILE, or write the vault once with this release (e.g. `tallyfy-vault login`)"))
        }
        let who = entry.requester ?? AuditRequester.thisProcess()
        var fields = AuditRecord(
            seq: 0, time: AuditRecord.now(), op: Self.op, event: entry.event, profile: entry.profile, user: entry.user,
            token: entry.token, change: entry.change, result: entry.result, uid: who.uid, pid: who.pid, ppid: who.ppid,
            parent: who.parent, tty: who.tty, ci: entry.requester == nil ? ci : nil, host: AuditRequester.host, prev: "", mac: "")
        do {
            if explicitFile == nil, let folder {
                if access(folder, F_OK) != 0 { try FileSafety.makeDirectory(folder) }
                try FileSafety.requireSafeDirectory(folder)
            }
            try AuditLog(path: path).append { tail in
                fields.seq = tail.seq + 1
                fields.prev = tail.link
                let prefix = fields.prefixBytes()
                return AuditRecord.line(prefix: prefix, mac: key?.mac(prefix) ?? "none")
            }
        } catch let error as VaultError {
            try trouble(error)
        }
    }

    /// Seals the current end of this machine's log into `vault`, just before
    /// it is written: a log later cut back before this point fails `audit
    /// verify`. In `required` mode an unreadable log stops the write.
    package func sealHead(into vault: UnlockedVault) throws {
        guard mode != .off, badMode == nil, let path = logPath(vaultID: vault.content.id) else { return }
        let log = AuditLog(path: path)
        let tail: AuditLog.Tail
        do {
            // Required: a log that can't take the write's record stops the write, before anything changes.
            if mode == .required { try log.probe() }
            tail = try log.currentTail()
        } catch let error as VaultError {
            return try trouble(error)
        }
        guard tail.seq > 0 else { return }
        var heads = vault.content.auditHeads ?? [:]
        heads[Self.headName(logPath: path)] = AuditHead(seq: tail.seq, link: tail.link, at: Date())
        // Bounded: the machines (or log paths) written from most recently.
        while heads.count > Self.maxHeads, let oldest = heads.min(by: { $0.value.at < $1.value.at })?.key { heads[oldest] = nil }
        vault.content.auditHeads = heads
    }

    static let maxHeads = 64

    /// A change just written to `vault` (`VaultStore.written`).
    package func recordChange(_ vault: UnlockedVault) throws {
        guard mode != .off || badMode != nil else { return }
        let key = vault.auditKey
        let note = Self.note
        try record(Entry(event: "change", profile: note?.profile ?? profile, user: note?.user,
            token: note?.token.map(key.fingerprint(of:)), change: note?.what), key: key, vaultID: vault.content.id)
    }

    /// A change made elsewhere (a user created in Tallyfy), with the key this process learned.
    package func recordChange(profile: String, user: String?) throws {
        guard mode != .off || badMode != nil else { return }
        let learned = Self.learned
        try record(Entry(event: "change", profile: profile, user: user), key: learned?.key, vaultID: learned?.id)
    }

    /// What a change is, when the command alone doesn't say: set around a
    /// renewal (`TokenBroker.renewedGrant`), which also names the token it sealed.
    package final class Note: @unchecked Sendable {
        let what: String
        let profile: String
        let user: String?
        private let lock = Mutex<String?>(nil)
        var token: String? { lock.withLock { $0 } }

        package init(what: String, profile: String, user: String?) {
            self.what = what
            self.profile = profile
            self.user = user
        }

        package func sealed(_ token: String) { lock.withLock { $0 = token } }
    }

    @TaskLocal package static var note: Note?

    /// Whether this process records refusals (a wrong key, a rolled-back
    /// vault). The launcher doesn't: it hands those over to the CLI, which
    /// meets them again and records them once.
    nonisolated(unsafe) package static var recordsRefusals = true

    /// A wrong passphrase or key, recorded without a MAC (no key opened the
    /// vault) in the log this machine knows for the vault's location.
    package func refusedUnlock(location: String, _ error: VaultError) {
        guard Self.recordsRefusals, mode != .off, badMode == nil else { return }
        try? record(Entry(event: "unlock-refused", profile: profile, result: Self.result(error)), key: nil,
            vaultID: vaultID(forLocation: location))
    }

    /// A change made without the key (`migrate` copies sealed bytes), unkeyed.
    package func unkeyedChange(location: String) throws {
        guard mode != .off || badMode != nil else { return }
        try record(Entry(event: "change"), key: nil, vaultID: vaultID(forLocation: location))
    }

    /// A command that failed after it opened the vault (`failed`, with the
    /// exit status and reason). Refusals are recorded where they happen.
    package static func recordFailure(_ error: VaultError, environment: [String: String]) {
        guard error.cause != .keyOpensNoSlot, error.cause != .rolledBack, let learned else { return }
        let trail = AuditTrail(environment: environment)
        guard trail.mode != .off, trail.badMode == nil else { return }
        try? trail.record(Entry(event: "failed", profile: learned.profile, result: result(error)), key: learned.key, vaultID: learned.id)
    }

    // MARK: - Which vault a location holds

    /// Remembers, once per location, which vault id it holds, so a record
    /// written without the key (which alone reads the id) finds the log.
    package func remember(location: String, id: String?, replacing: Bool = false) {
        guard mode != .off, explicitFile == nil, let folder, let id, Self.isName(id) else { return }
        let file = "\(folder)/locations/\(AuditKey.link(Array(location.utf8)))"
        guard replacing || access(file, F_OK) != 0 else { return }
        try? FileSafety.makeDirectory(folder + "/locations")
        try? FileSafety.atomicReplace(file, with: Data(id.utf8))
    }

    package func vaultID(forLocation location: String) -> String? {
        guard explicitFile == nil, let folder else { return nil }
        let file = "\(folder)/locations/\(AuditKey.link(Array(location.utf8)))"
        guard let data = try? FileSafety.readPrivate(file, what: "the audit location"), data.count == 32 else { return nil }
        let id = String(decoding: data, as: UTF8.self)
        return Self.isName(id) ? id : nil
    }

    /// A record that could not be written: fatal when required, else one warning line per process.
    private func trouble(_ error: VaultError) throws {
        if mode == .required {
            throw VaultError(.io, error.message + "; TALLYFY_VAULT_AUDIT=required, so the command stops here", hint: error.hint)
        }
        let first = Self.warned.withLock { warned in
            defer { warned = true }
            return !warned
        }
        guard first else { return }
        let text = "tallyfy-vault: warning: no audit record written: \(error.message) (TALLYFY_VAULT_AUDIT=required refuses instead)\n"
        _ = text.withCString { write(2, $0, strlen($0)) }
    }

    private static let warned = Mutex(false)

    /// A vault id is 32 lower-case hex digits: never a path.
    static func isName(_ id: String) -> Bool {
        id.utf8.count == 32 && id.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// The result field for a failure: the exit status and the reason.
    package static func result(_ error: VaultError) -> String {
        "\(error.exitStatus): \(String(error.message.prefix(300)))"
    }
}

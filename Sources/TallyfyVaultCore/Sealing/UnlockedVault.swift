#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// An opened vault: the data key, the decrypted root, and the user-token
/// records still sealed until one is asked for.
///
/// This type does all the cryptography of the format; `VaultStore` moves its
/// bytes to and from disk. Mutations change only memory until `sealed()`
/// produces the new file bytes.
package final class UnlockedVault: @unchecked Sendable {
    private var dataKey: SecretBox
    private var indexKey: SecretBox
    private(set) var slots: [KeySlot] { didSet { modificationCount += 1 } }
    /// The decrypted root: profiles, credentials, application tokens.
    package var content: VaultContent { didSet { modificationCount += 1 } }
    /// The sealed user-token records: read in place from the file until
    /// something reads them all or changes one (see `RecordTable`).
    private var recordTable: RecordTable
    /// Every record, for reading; the table is materialised once.
    private var records: [SealedRecord] {
        let all = recordTable.all
        recordTable = RecordTable(all)
        return all
    }
    /// One coder each for all the records of a listing or a rekey (ten
    /// thousand of them), instead of one per record.
    private lazy var recordEncoder = SealedJSON.encoder()
    private lazy var recordDecoder = SealedJSON.decoder()
    /// Set by `forgetClientSecrets`: this copy may no longer be sealed.
    private var forgotClientSecrets = false

    /// Blanks every profile's client secret in this copy, for a long-lived
    /// reader that hands out tokens and never renews from it (the agent
    /// renews from a fresh open under the lock): the secret then spends
    /// milliseconds in ordinary memory rather than the reader's whole life.
    package func forgetClientSecrets() {
        for name in content.profiles.keys { content.profiles[name]?.clientSecret = "" }
        forgotClientSecrets = true
    }

    /// Grows with every change, so a store writes only when something changed.
    private(set) var modificationCount = 0
    private init(dataKey box: SecretBox, slots: [KeySlot], content: VaultContent, records: RecordTable) {
        self.dataKey = box
        indexKey = Self.deriveIndexKey(box)
        self.slots = slots
        self.content = content
        recordTable = records
    }

    /// A new, empty vault with a fresh random data key and one slot.
    package static func create(secret: UnlockSecret, label: String, kdf: KDFLevel) throws -> UnlockedVault {
        ProcessHardening.protect()
        try SlotLabel.check(label)
        let key = SecretBytes.random(count: Sodium.aeadKeyBytes)
        let slot = try KeySlot.make(wrapping: key, with: secret, label: label, kdf: kdf)
        var content = VaultContent()
        content.id = hex(Sodium.randomBytes(16))  // named from the start, so its first write already has an audit log
        return UnlockedVault(dataKey: SecretBox(key), slots: [slot], content: content, records: RecordTable([]))
    }

    /// Opens the vault bytes with the data key `unlocker` holds or finds:
    /// the first secret that opens a slot wins, so a passphrase after a
    /// working key file costs no Argon2id, and a second open in the same
    /// process costs none at all.
    ///
    /// Throws `.refused` when no secret opens any slot, `.corrupt` when a slot
    /// opens but the body does not authenticate.
    static func open(_ parsed: ParsedVault, with unlocker: VaultUnlocker) throws -> UnlockedVault {
        // The one place a vault is decrypted hardens the process first, so
        // no command (check, status, a library caller) can forget to.
        ProcessHardening.protect()
        guard let keyBox = try unlocker.dataKey(for: parsed.slots) else {
            throw Self.wrongSecretError(unlocker.secrets, slots: parsed.slots)
        }

        var associatedData = Data(parsed.headerBytes)
        associatedData.append(parsed.indexBytes)
        guard let padded = Sodium.open(parsed.rootSealed, key: keyBox.bytes, nonce: parsed.rootNonce, associatedData: associatedData) else {
            throw VaultError(.corrupt, "the vault was modified or damaged: its sealed body does not authenticate",
                hint: ByteReader.restoreHint)
        }
        let content: VaultContent = try padded.withUnsafeBytes { (bytes) throws(VaultError) in
            try decodePadded(bytes, what: "sealed body")
        }
        guard content.hasReadableDates else {
            throw VaultError(.corrupt, "the vault's sealed body holds a date outside 1970..9999", hint: ByteReader.restoreHint)
        }
        return UnlockedVault(dataKey: keyBox, slots: parsed.slots, content: content, records: parsed.recordTable)
    }

    /// Opens with `secrets`, remembering nothing (tests, fuzzing, vectors).
    static func open(_ parsed: ParsedVault, with secrets: [UnlockSecret]) throws -> UnlockedVault {
        try open(parsed, with: VaultUnlocker(secrets: secrets))
    }

    /// Tells `unlocker` the data key and slots this vault will be written
    /// with, so re-reading the file after writing it needs no derivation.
    func rememberKey(in unlocker: VaultUnlocker) {
        unlocker.remember(slots: slots, key: dataKey)
    }

    private static func wrongSecretError(_ secrets: [UnlockSecret], slots: [KeySlot]) -> VaultError {
        let origins = secrets.map(\.origin).joined(separator: ", ")
        let kinds = SlotKind.allCases.filter { kind in slots.contains { $0.kind == kind } }
        let given = Set(secrets.map(\.kind))
        if given.count == 1, let only = given.first, !kinds.contains(only) {
            return VaultError(.refused, "this vault has no \(only.name) slot, so \(origins) cannot open it",
                hint: "unlock it with " + kinds.map { $0.method.unlockHint }.joined(separator: ", or "), cause: .keyOpensNoSlot)
        }
        return VaultError(.refused, "wrong passphrase or key: \(origins) opens none of the vault's key slots",
            hint: "check which key file or passphrase this vault was made with (`tallyfy-vault keys list` shows its slots)",
            cause: .keyOpensNoSlot)
    }

    // MARK: - Producing the file

    /// The complete file bytes for the current state, sealed with a fresh
    /// nonce for the root. Unchanged user-token records are copied as they are.
    ///
    /// Refuses (`.usage`, nothing written) a state that a reader would refuse:
    /// a value outside `VaultBounds`, or a part over the format's limits.
    package func sealed() throws -> Data {
        precondition(!forgotClientSecrets, "a copy of the vault without its client secrets is never sealed")
        // Each write is a new generation; a vault without a name gets one.
        if content.id == nil { content.id = Self.hex(Sodium.randomBytes(16)) }
        pinAuditKey()
        content.generation = (content.generation ?? 0) + 1
        guard content.isWithinBounds else {
            throw VaultError(.usage, "a value to be sealed is outside the vault's limits (a date outside 1970..9999, or a name, ID, URL, secret or token too long); nothing was changed",
                hint: "SECURITY.md, \"Limits on what goes in\", lists them; a profile stored by an older release with a longer value can be stored again with `tallyfy-vault credentials set`")
        }
        return try sealedUnchecked()
    }

    /// `sealed()` without the writer's bounds: the tests use it to make the
    /// hostile files a reader must refuse. The format's hard limits still hold.
    func sealedUnchecked() throws -> Data {
        let header = try ParsedVault.encodeHeader(slots: slots, summary: summary())
        guard header.count <= Int(UInt32.max) else { throw Self.tooLarge("header") }
        let index = ParsedVault.encodeIndex(records)
        let padded = try Self.paddedJSON(content)
        guard padded.count + Sodium.aeadTagBytes <= VaultFormat.maxRootLength else { throw Self.tooLarge("sealed body") }

        let nonce = Sodium.randomBytes(Sodium.aeadNonceBytes)
        let root = padded.withUnsafeBytes {
            Sodium.seal($0, key: dataKey.bytes, nonce: nonce, associatedData: header + index)
        }
        var out = Data(capacity: header.count + index.count + 28 + root.count + records.reduce(0) { $0 + $1.bytes.count })
        out.append(contentsOf: header)
        out.append(contentsOf: index)
        out.append(contentsOf: nonce)
        var length = ByteWriter()
        length.u32(UInt32(root.count))
        out.append(contentsOf: length.bytes)
        out.append(contentsOf: root)
        for record in records { out.append(record.bytes) }
        return out
    }

    private static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }, as: UTF8.self)
    }

    private static func tooLarge(_ part: String) -> VaultError {
        VaultError(.usage, "the vault's \(part) would exceed the format's limit; nothing was changed",
            hint: "remove profiles or user tokens you no longer need")
    }

    /// The clear-text summary that `check` reads without a key.
    package func summary() -> VaultSummary {
        var profiles: [String: ProfileSummary] = [:]
        for (name, profile) in content.profiles {
            let tag = profileTag(name)
            var count = 0
            var earliest: Int64? = nil
            for record in records where record.entry.profileTag == tag {
                count += 1
                earliest = min(earliest ?? .max, record.entry.expiresAt)
            }
            profiles[name] = ProfileSummary(
                secretSetAt: profile.secretSetAt, applicationTokenExpiresAt: profile.applicationToken?.expiresAt,
                userTokenCount: count, earliestUserTokenExpiresAt: earliest.map { Date(timeIntervalSince1970: TimeInterval($0)) },
                lastRenewalFailure: profile.lastRenewalFailure)
        }
        return VaultSummary(profiles: profiles, vaultID: content.id, generation: content.generation)
    }

    // MARK: - User-token records

    /// The sealed user token of `email` in `profile`, opening only that record.
    package func userToken(profile: String, email: String) throws -> UserTokenRecord? {
        let locator = locator(profile: profile, email: email)
        guard let record = recordTable.find(locator) else { return nil }
        var scratch = GuardedScratch()
        return try openRecord(record, scratch: &scratch)
    }

    /// Every user token of `profile`, opened one by one (for listing and checks).
    package func userTokens(profile: String) throws -> [UserTokenRecord] {
        let tag = profileTag(profile)
        var scratch = GuardedScratch()
        var opened: [UserTokenRecord] = []
        for record in records where record.entry.profileTag == tag {
            opened.append(try openRecord(record, scratch: &scratch))
        }
        // Lowercase each email once, not twice per comparison.
        return zip(opened.map { $0.email.lowercased() }, opened).sorted { $0.0 < $1.0 }.map(\.1)
    }

    /// How many user tokens `profile` has, without opening them.
    package func userTokenCount(profile: String) -> Int {
        let tag = profileTag(profile)
        return records.reduce(0) { $0 + ($1.entry.profileTag == tag ? 1 : 0) }
    }

    /// Seals `record`, replacing any earlier token of the same user.
    package func setUserToken(_ record: UserTokenRecord) throws {
        try setUserTokens([record])
    }

    /// Seals many records in one pass (one scan of the index, not one per record).
    package func setUserTokens(_ newRecords: [UserTokenRecord]) throws {
        var scratch = GuardedScratch()
        var sealed: [SealedRecord] = []
        sealed.reserveCapacity(newRecords.count)
        for record in newRecords { sealed.append(try seal(record, scratch: &scratch)) }
        recordTable.upsert(sealed)
        modificationCount += 1
    }

    private func seal(_ record: UserTokenRecord, scratch: inout GuardedScratch) throws -> SealedRecord {
        guard record.isWithinBounds else {
            throw VaultError(.usage, "the user token to be sealed is outside the vault's limits (its expiry, email or length); nothing was changed")
        }
        guard records.count < VaultFormat.maxRecords || recordTable.find(locator(profile: record.profile, email: record.email)) != nil else {
            throw VaultError(.usage, "the vault holds \(VaultFormat.maxRecords) user tokens, the most it can; nothing was changed",
                hint: "drop tokens you no longer need with `tallyfy-vault users forget EMAIL`")
        }
        let locator = locator(profile: record.profile, email: record.email)
        var json = try recordEncoder.encode(record)
        defer { json.wipe() }
        let paddedLength = Sodium.paddedLength(json.count, blockSize: VaultFormat.padBlock)
        guard paddedLength + Sodium.aeadTagBytes <= VaultFormat.maxRecordLength else { throw Self.tooLarge("user-token record") }
        let nonce = Sodium.randomBytes(Sodium.aeadNonceBytes)
        let sealed = scratch.use(paddedLength) { padded in
            _ = Sodium.pad(json, blockSize: VaultFormat.padBlock, into: padded)
            return Sodium.seal(UnsafeRawBufferPointer(padded), key: dataKey.bytes, nonce: nonce,
                associatedData: VaultFormat.recordAssociatedPrefix + locator)
        }
        let entry = IndexEntry(
            locator: locator, profileTag: profileTag(record.profile),
            expiresAt: Int64(record.token.expiresAt.timeIntervalSince1970.rounded(.down)),
            sealedLength: UInt32(sealed.count), tag: Array(sealed.suffix(Sodium.aeadTagBytes)))
        return SealedRecord(entry: entry, bytes: Data(nonce + sealed))
    }

    /// Drops the user token of `email`; `false` when there was none.
    @discardableResult
    package func removeUserToken(profile: String, email: String) -> Bool {
        let locator = locator(profile: profile, email: email)
        let removed = recordTable.removeAll { $0.entry.locator == locator }
        if removed > 0 { modificationCount += 1 }
        return removed > 0
    }

    /// Drops a profile and every user token that belongs to it.
    package func removeProfile(_ name: String) {
        content.profiles[name] = nil
        let tag = profileTag(name)
        if recordTable.removeAll(where: { $0.entry.profileTag == tag }) > 0 { modificationCount += 1 }
    }

    /// Opens one record into `scratch`, the guarded buffer a whole listing shares.
    private func openRecord(_ record: SealedRecord, scratch: inout GuardedScratch) throws -> UserTokenRecord {
        let bytes = record.bytes
        let nonce = bytes.prefix(Sodium.aeadNonceBytes)
        let sealed = bytes.dropFirst(Sodium.aeadNonceBytes)
        let decoded = try scratch.use(max(0, sealed.count - Sodium.aeadTagBytes)) { (plain) throws(VaultError) -> UserTokenRecord in
            guard Array(sealed.suffix(Sodium.aeadTagBytes)) == record.entry.tag,
                let length = Sodium.open(
                    sealed, key: dataKey.bytes, nonce: nonce,
                    associatedData: VaultFormat.recordAssociatedPrefix + record.entry.locator, into: plain)
            else {
                throw VaultError(.corrupt, "the vault was modified or damaged: a user-token record does not authenticate",
                    hint: ByteReader.restoreHint)
            }
            return try Self.decodePadded(
                UnsafeRawBufferPointer(rebasing: plain[..<length]), what: "user-token record", decoder: recordDecoder)
        }
        guard decoded.token.hasReadableDates else {
            throw VaultError(.corrupt, "the vault's user-token record holds a date outside 1970..9999", hint: ByteReader.restoreHint)
        }
        guard locator(profile: decoded.profile, email: decoded.email) == record.entry.locator else {
            throw VaultError(.corrupt, "the vault was modified or damaged: a user-token record is out of place",
                hint: ByteReader.restoreHint)
        }
        return decoded
    }

    // MARK: - Slots and keys

    /// The unlock slots, without any key material.
    package var slotList: [SlotInfo] { slots.map(SlotInfo.init) }

    /// A label not used yet, such as "passphrase-2".
    package func unusedLabel(for kind: SlotKind) -> String {
        let base = kind.name
        if !slots.contains(where: { $0.label == base }) { return base }
        return (2...).lazy.map { "\(base)-\($0)" }.first { label in !self.slots.contains { $0.label == label } }!
    }

    /// Adds a slot that opens the vault with `secret`.
    package func addSlot(secret: UnlockSecret, label: String, kdf: KDFLevel) throws {
        try SlotLabel.check(label)
        guard !slots.contains(where: { $0.label == label }) else {
            throw VaultError(.usage, "a key slot labelled \"\(label)\" exists already", hint: "choose another --label")
        }
        guard slots.count < VaultFormat.maxSlots else {
            throw VaultError(.usage, "the vault has \(slots.count) key slots, the most it can hold",
                hint: "remove one with `tallyfy-vault keys remove LABEL`")
        }
        // A key file or a token key that opens a slot already would only
        // add a second way in with the same key (a passphrase is not checked:
        // that would cost an Argon2id derivation per slot).
        for slot in slots where slot.kind == secret.kind && slot.kind != .passphrase {
            if try slot.unwrap(with: secret) != nil {
                throw VaultError(.usage, "this \(secret.kind == .keyFile ? "key file" : "key") already opens the vault (slot \"\(slot.label)\")")
            }
        }
        slots.append(try KeySlot.make(wrapping: dataKey.bytes, with: secret, label: label, kdf: kdf))
    }

    /// Tests only: slots no secret at hand could make (a PKCS#11 slot
    /// without a token), to check how the format carries them.
    func replaceSlotsForTesting(_ newSlots: [KeySlot]) {
        slots = newSlots
    }

    /// Removes the slot labelled `label`; the last slot can't go.
    package func removeSlot(label: String) throws {
        guard let position = slots.firstIndex(where: { $0.label == label }) else {
            throw VaultError(.usage, "no key slot is labelled \"\(label)\"", hint: "`tallyfy-vault keys list` shows the labels")
        }
        guard slots.count > 1 else {
            throw VaultError(.usage, "\"\(label)\" is the vault's only key slot; removing it would lock the vault for good",
                hint: "add another first with `tallyfy-vault keys add`")
        }
        slots.remove(at: position)
    }

    /// A new data key: every slot that `secrets` opens is wrapped again (with
    /// a fresh salt), every user-token record re-sealed. Slots no given secret
    /// opens can't be re-wrapped; they are refused unless `dropOthers`.
    package func rekey(secrets: [UnlockSecret], kdf: KDFLevel? = nil, dropOthers: Bool) throws {
        var newSlots: [KeySlot] = []
        var unreachable: [String] = []
        pinAuditKey()  // before the data key it is derived from goes
        let newKey = SecretBytes.random(count: Sodium.aeadKeyBytes)
        for slot in slots {
            var rewrapped: KeySlot? = nil
            for secret in secrets where slot.accepts(secret) {
                if try slot.unwrap(with: secret) != nil {
                    let level = kdf ?? slot.kind.method.kdfLevel(of: slot)
                    rewrapped = try KeySlot.make(wrapping: newKey, with: secret, label: slot.label, kdf: level)
                    break
                }
            }
            if let rewrapped { newSlots.append(rewrapped) } else { unreachable.append(slot.label) }
        }
        if !unreachable.isEmpty && !dropOthers {
            throw VaultError(.usage,
                "rekey needs every slot's key, and none was given for: \(unreachable.map { "\"\($0)\"" }.joined(separator: ", "))",
                hint: "give those key files, passphrases or tokens as well (--key-file, --passphrase-file, TALLYFY_VAULT_PASSPHRASE, --pkcs11; "
                    + "at a terminal rekey asks for a passphrase slot's passphrase), or pass --drop-other-slots to remove them")
        }
        guard !newSlots.isEmpty else {
            throw VaultError(.refused, "none of the given keys opens a slot of this vault", cause: .keyOpensNoSlot)
        }
        var scratch = GuardedScratch()
        var opened: [UserTokenRecord] = []
        opened.reserveCapacity(records.count)
        for record in records { opened.append(try openRecord(record, scratch: &scratch)) }
        // Re-sealing may throw halfway: keep everything it touches, so the
        // object is never left half old, half new.
        let previous = (dataKey, indexKey, slots, recordTable)
        dataKey = SecretBox(newKey)
        indexKey = Self.deriveIndexKey(dataKey)
        slots = newSlots
        recordTable = RecordTable([])
        do {
            try setUserTokens(opened)
        } catch {
            (dataKey, indexKey, slots, recordTable) = previous
            throw error
        }
    }

    // MARK: - Audit

    /// The key of this vault's audit records: the root pinned in the sealed
    /// body, else derived from the data key (a vault not yet written by this
    /// release). Only an unlock source reaches either.
    package var auditKey: AuditKey {
        AuditKey(root: content.auditKey.flatMap(AuditHex.decode).flatMap { $0.count == 32 ? $0 : nil } ?? derivedAuditRoot)
    }

    private var derivedAuditRoot: [UInt8] {
        dataKey.bytes.withUnsafeBytes { Sodium.keyedName(outputBytes: 32, key: $0, message: Array("TFYVAULT-audit-key-v1".utf8)) }
    }

    /// Keeps the audit key across `rekey`: records already written stay verifiable.
    private func pinAuditKey() {
        if content.auditKey == nil { content.auditKey = Self.hex(derivedAuditRoot) }
    }

    // MARK: - Keyed names

    private static func deriveIndexKey(_ dataKey: SecretBox) -> SecretBox {
        SecretBox(dataKey.bytes.withUnsafeBytes {
            Sodium.keyedHash(outputBytes: 32, key: $0, message: Array("TFYVAULT-index-key-v1".utf8))
        })
    }

    private func keyedName(_ parts: [String], length: Int) -> [UInt8] {
        let message = Array(parts.joined(separator: "\0").utf8)
        return indexKey.bytes.withUnsafeBytes { Sodium.keyedName(outputBytes: length, key: $0, message: message) }
    }

    func locator(profile: String, email: String) -> [UInt8] {
        keyedName(["user", profile, email.lowercased()], length: 16)
    }

    func profileTag(_ profile: String) -> [UInt8] {
        keyedName(["profile", profile], length: 8)
    }

    /// `value` as padded JSON in guarded memory; the encoder's plain copy is wiped.
    private static func paddedJSON(_ value: some Encodable) throws -> SecretBytes {
        var json = try SealedJSON.encoder().encode(value)
        defer { json.wipe() }
        return Sodium.pad(json, blockSize: VaultFormat.padBlock)
    }

    private static func decodePadded<T: Decodable>(
        _ padded: UnsafeRawBufferPointer, what: String, decoder: JSONDecoder = SealedJSON.decoder()
    ) throws(VaultError) -> T {
        guard let length = Sodium.unpaddedLength(padded, blockSize: VaultFormat.padBlock) else {
            throw VaultError(.corrupt, "the vault's \(what) has broken padding", hint: ByteReader.restoreHint)
        }
        let json = Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: padded.baseAddress!), count: length, deallocator: .none)
        let decoded = try? decoder.decode(T.self, from: json)
        guard let decoded else {
            throw VaultError(.corrupt, "the vault's \(what) is not the expected JSON", hint: ByteReader.restoreHint)
        }
        return decoded
    }
}

extension KDFLevel {
    /// The named level whose cost a slot was made with, so `rekey` keeps it.
    static func matching(opsLimit: UInt64, memLimit: UInt64) -> KDFLevel {
        allCases.first { $0.parameters == (opsLimit, memLimit) } ?? .moderate
    }
}

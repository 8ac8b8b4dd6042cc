/// Something that can open a key slot: a key file's 32 bytes or a passphrase.
///
/// A class rather than a `~Copyable` struct so that several sources can be
/// collected in an array; the bytes themselves stay in guarded memory with a
/// single owner and are wiped when the last reference goes.
public final class UnlockSecret: @unchecked Sendable {
    public let kind: SlotKind
    public let bytes: SecretBytes
    /// Where it came from, for messages ("key file /etc/…", "TALLYFY_VAULT_PASSPHRASE").
    public let origin: String

    public init(kind: SlotKind, bytes: consuming SecretBytes, origin: String) {
        self.kind = kind
        self.bytes = bytes
        self.origin = origin
    }

    /// The length of a key file, and of the random bytes `keygen` writes.
    public static let keyFileLength = 32
}

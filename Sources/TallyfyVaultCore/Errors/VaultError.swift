/// The one error type the library throws to its callers.
///
/// Each error carries a kind that maps to the exit statuses of README.md, a
/// message that says what failed, and an optional hint that says what to do
/// next. Neither text ever contains a secret or a token: messages are built
/// from names, paths and statuses, never from secret values; of a server's
/// answer only Tallyfy's own error `message` and `X-Request-Id` are quoted,
/// cleaned to one line and dropped if they echo what the request carried.
public struct VaultError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, in the categories of README.md's exit statuses.
    public enum Kind: Sendable, Equatable {
        /// Bad arguments or input (64).
        case usage
        /// The vault is corrupt, truncated or tampered with (65).
        case corrupt
        /// The vault or a key file does not exist (66).
        case notFound
        /// Tallyfy could not be reached, or answered 5xx after retries (69).
        case unavailable
        /// An I/O error reading or writing a file (74).
        case io
        /// Try again later: the vault lock timed out, or Tallyfy answered 429 (75).
        case tryLater
        /// Refused: wrong key, `invalid_client`, unsafe file permissions (77).
        case refused
        /// Configuration: no credentials, no unlock source, no valid token with `--no-refresh` (78).
        case configuration
    }

    public let kind: Kind
    /// What failed: lower-case, no trailing period, never a secret.
    public let message: String
    /// What to do next, when there is something useful to say.
    public let hint: String?
    /// Why, finer than `kind`: what a caller matches when causes of one exit
    /// status call for different actions. Never the message text.
    public let cause: Cause

    package init(_ kind: Kind, _ message: String, hint: String? = nil, cause: Cause = .unspecified) {
        self.kind = kind
        self.message = message
        self.hint = hint
        self.cause = cause
    }

    /// The causes callers act on. A struct over a private code (as
    /// AsyncHTTPClient's `HTTPClientError`), so causes can be added without
    /// breaking anyone's `switch`.
    public struct Cause: Hashable, Sendable, CustomStringConvertible {
        private enum Code: Hashable, Sendable {
            case unspecified, keyOpensNoSlot, tallyfyRefusedCredentials, tallyfyRejectedApplicationToken, etcdRefusedAccess, etcdRefusedTLS, rolledBack
        }

        private let code: Code
        private init(_ code: Code) { self.code = code }

        /// Nothing finer than the kind is known.
        public static let unspecified = Cause(.unspecified)
        /// The given passphrase or key opens none of the vault's slots (the
        /// slots changed, or it was never one of them): 77.
        public static let keyOpensNoSlot = Cause(.keyOpensNoSlot)
        /// Tallyfy refused the client ID and secret (`invalid_client`, 401/403 at the token endpoint): 77.
        public static let tallyfyRefusedCredentials = Cause(.tallyfyRefusedCredentials)
        /// Tallyfy answered an API call with 401 for the application token
        /// (expired or revoked on its side): 77.
        public static let tallyfyRejectedApplicationToken = Cause(.tallyfyRejectedApplicationToken)
        /// etcd refused this machine's user, password or permissions: 77.
        public static let etcdRefusedAccess = Cause(.etcdRefusedAccess)
        /// etcd refused the TLS connection or this machine's certificate: 77.
        public static let etcdRefusedTLS = Cause(.etcdRefusedTLS)

        /// The vault is older than one this machine has seen (65).
        public static let rolledBack = Cause(.rolledBack)

        public var description: String { "\(code)" }
    }

    /// The process exit status README.md assigns to this kind of failure.
    public var exitStatus: Int32 {
        switch kind {
        case .usage: 64
        case .corrupt: 65
        case .notFound: 66
        case .unavailable: 69
        case .io: 74
        case .tryLater: 75
        case .refused: 77
        case .configuration: 78
        }
    }

    public var description: String {
        hint.map { "\(message) (\($0))" } ?? message
    }
}

extension VaultError.Kind {
    /// The kind whose exit status is `status` (an agent relays errors as
    /// statuses); anything unknown is `.unavailable`.
    package init(exitStatus status: Int32) {
        switch status {
        case 64: self = .usage
        case 65: self = .corrupt
        case 66: self = .notFound
        case 74: self = .io
        case 75: self = .tryLater
        case 77: self = .refused
        case 78: self = .configuration
        default: self = .unavailable
        }
    }
}

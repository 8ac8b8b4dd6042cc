#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// What `exec --keep-fresh` does when the token is renewed, and when it has
/// expired and cannot be renewed.
package struct KeepFreshOptions: Sendable, Equatable {
    /// `--on-renew`: what the child is told after each renewal.
    package enum OnRenew: Sendable, Equatable {
        /// Nothing: the child reads `TALLYFY_TOKEN_FILE` when it needs to.
        case none
        /// `signal:NAME`: this signal, once per renewal.
        case signal(Int32)
        /// SIGTERM, up to `stopGrace` to exit, then SIGKILL; then the command
        /// is started again with the new token in its environment.
        case restart

        /// `none`, `signal:NAME` (`signal:HUP`, `signal:SIGUSR1`) or `restart`.
        package init(parsing text: String) throws {
            switch text {
            case "none": self = .none
            case "restart": self = .restart
            default:
                let reloads = SignalName.reloads.joined(separator: ", ")
                guard text.hasPrefix("signal:") else {
                    throw VaultError(.usage, "--on-renew \(text) is not one of none, signal:NAME, restart",
                        hint: "e.g. --on-renew signal:HUP; NAME is one of \(reloads)")
                }
                let name = String(text.dropFirst("signal:".count))
                guard let number = SignalName.number(name) else {
                    // Known but no reload (KILL, STOP, PIPE, SEGV, TERM…): it would end or freeze the command at the first renewal.
                    if SignalName.isSignal(name) {
                        throw VaultError(.usage, "--on-renew \(text) would stop the command at its first renewal, not make it reload",
                            hint: "use --on-renew restart to stop and start the command with the new token; signal:NAME takes \(reloads)")
                    }
                    throw VaultError(.usage, "--on-renew \(text) is not one of none, signal:NAME, restart",
                        hint: "e.g. --on-renew signal:HUP; NAME is one of \(reloads)")
                }
                self = .signal(number)
            }
        }
    }

    /// `--on-expiry`: when the token has expired and renewing still fails.
    package enum OnExpiry: String, Sendable, Equatable, CaseIterable {
        /// Keep the child running (with the expired token) and keep retrying.
        case keep
        /// Stop the child (as for a restart) and exit 69.
        case stop
    }

    package var onRenew: OnRenew
    package var onExpiry: OnExpiry
    /// How long a child has to exit after SIGTERM before it gets SIGKILL.
    package var stopGrace: TimeInterval

    package init(onRenew: OnRenew = .none, onExpiry: OnExpiry = .keep, stopGrace: TimeInterval = 10) {
        self.onRenew = onRenew
        self.onExpiry = onExpiry
        self.stopGrace = stopGrace
    }
}

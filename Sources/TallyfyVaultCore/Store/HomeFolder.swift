#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#endif

/// The user's home folder, the one rule for everything kept under it (the
/// default vault, the etcd cache, the rollback memory, the audit log):
/// `HOME` when it is an absolute path, else the home of this uid's passwd
/// entry, else none (a uid with no entry, as in some containers).
///
/// The same rule everywhere matters: the rollback memory used to need `HOME`
/// while the default vault fell back to the passwd entry, so a service run
/// without `HOME` found its vault and silently remembered no generation.
package enum HomeFolder {
    package static func path(environment: [String: String]) -> String? {
        fromEnvironment(environment) ?? fromPasswd()
    }

    /// `HOME` when it is an absolute path. The launcher asks only this: it
    /// hands a command over to the full CLI rather than look the home up
    /// through NSS with the glibc built into it (SECURITY.md).
    package static func fromEnvironment(_ environment: [String: String]) -> String? {
        guard let home = environment["HOME"], home.hasPrefix("/") else { return nil }
        return home
    }

    /// The home of this uid's passwd entry (`getpwuid_r`: a library caller
    /// may open stores on many threads at once).
    private static func fromPasswd() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let home = buffer.withUnsafeMutableBufferPointer { strings -> String? in
            var entry = passwd()
            var found: UnsafeMutablePointer<passwd>?
            guard let base = strings.baseAddress, getpwuid_r(getuid(), &entry, base, strings.count, &found) == 0, found != nil,
                let folder = entry.pw_dir
            else { return nil }
            return String(cString: folder)
        }
        guard let home, home.hasPrefix("/") else { return nil }
        return home
    }
}

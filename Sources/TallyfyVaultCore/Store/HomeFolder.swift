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
        if let home = environment["HOME"], home.hasPrefix("/") { return home }
        guard let entry = getpwuid(getuid()), let folder = entry.pointee.pw_dir else { return nil }
        let home = String(cString: folder)
        return home.hasPrefix("/") ? home : nil
    }
}

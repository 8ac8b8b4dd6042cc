import CSodium
#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#endif

/// Keeps secrets out of core dumps and away from same-user debuggers.
///
/// `PR_SET_DUMPABLE 0` stops core dumps and `ptrace` attachment by other
/// non-root processes of the same user and makes `/proc/PID/mem` and
/// `environ` root-only; `RLIMIT_CORE 0` is the belt to that brace. Both are
/// undone for an `exec` child: `execve` resets dumpability by itself, and the
/// core limit is put back before it, so the child runs as it would without us.
package enum ProcessHardening {
    nonisolated(unsafe) private static var savedCoreLimit: rlimit?

    /// Called once, before any secret is read.
    package static func protect() {
        guard savedCoreLimit == nil else { return }
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_CORE.rawValue), &limit)
        savedCoreLimit = limit
        var none = rlimit(rlim_cur: 0, rlim_max: limit.rlim_max)
        setrlimit(Int32(RLIMIT_CORE.rawValue), &none)
        tallyfy_set_dumpable(0)
    }

    /// The core limit the user had, for a child started while this process
    /// stays hardened (`exec --keep-fresh`); `nil` before `protect()`.
    package static var coreLimitForChild: rlimit? { savedCoreLimit }

    /// Puts the core limit back, just before handing the process to a child.
    package static func restoreForChild() {
        guard var limit = savedCoreLimit else { return }
        setrlimit(Int32(RLIMIT_CORE.rawValue), &limit)
    }
}

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
import TallyfyVaultCore

#if canImport(Glibc)
    import Glibc
#endif

/// Where the full CLI is, found from this launcher's own resolved path and
/// never from argv[0] or the current folder (a bare `tallyfy-vault` found on
/// PATH has no folder in argv[0], and whoever controls the current folder
/// must not get their `./tallyfy-vault-cli` run). The layouts, and what makes
/// a CLI safe to run, are `InstallLayout`'s, which `doctor` uses too.
enum CLILocation {
    case found(String)
    case notFound(expected: [String])
    case unsafe(String, reason: String)
    case unknownLocation

    static func find() -> CLILocation {
        guard let me = ThisProgram.path else { return .unknownLocation }
        switch InstallLayout.findCLI(launcher: me) {
        case .found(let path): return .found(path)
        case .notFound(let expected): return .notFound(expected: expected)
        case .unsafe(let path, let reason): return .unsafe(path, reason: reason)
        }
    }

}

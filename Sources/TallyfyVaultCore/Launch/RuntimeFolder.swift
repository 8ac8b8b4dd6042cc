#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The private folder the agent's socket and `exec --keep-fresh`'s token
/// folders live in: `$XDG_RUNTIME_DIR/tallyfy-vault`, else
/// `/tmp/tallyfy-vault-UID`.
///
/// Under `/tmp` anyone can create that name first (a folder of their own, an
/// open one, a link). It is refused, as always, but that must not lock the
/// user out of the agent or keep-fresh: as ssh-agent does, a fresh folder
/// is then made with `mkdtemp` (`/tmp/tallyfy-vault-UID.XXXXXX`, 0700, ours
/// by construction) and the caller is told, so it can say where.
package enum RuntimeFolder {
    /// The shared folder's path for this environment (`tmp` only for tests).
    package static func sharedPath(environment: [String: String], tmp: String = "/tmp") -> String {
        if let runtime = environment["XDG_RUNTIME_DIR"], runtime.hasPrefix("/") {
            return (runtime.hasSuffix("/") ? String(runtime.dropLast()) : runtime) + "/tallyfy-vault"
        }
        return "\(tmp)/tallyfy-vault-\(geteuid())"
    }

    /// The folder to use: the shared one, made 0700 when missing; without
    /// `XDG_RUNTIME_DIR`, a fresh private one when the shared one is unsafe
    /// (`fallback` says which and why). Under `XDG_RUNTIME_DIR` (a folder
    /// only the user can write) an unsafe folder is the user's own doing and
    /// is refused with 77.
    package static func prepare(environment: [String: String], tmp: String = "/tmp") throws -> (path: String, fallback: String?) {
        let shared = sharedPath(environment: environment, tmp: tmp)
        let inTmp = !(environment["XDG_RUNTIME_DIR"]?.hasPrefix("/") ?? false)
        do {
            try makePrivate(shared)
            return (shared, nil)
        } catch let error as VaultError where error.kind == .refused && inTmp {
            var template = Array("\(shared).XXXXXX".utf8CString)
            guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
                throw VaultError(.io, "\(error.message), and no private folder could be made in \(tmp) instead: \(String(cString: strerror(errno)))",
                    hint: error.hint)
            }
            let fresh = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return (fresh, "\(error.message); using the new private folder \(fresh) instead")
        }
    }

    /// A folder only this user can enter: made 0700 when missing; refused
    /// (77) when it is a symbolic link, not a folder, another user's, or
    /// open to others.
    static func makePrivate(_ path: String) throws {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw VaultError(.io, "could not create the private folder \(path): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard lstat(path, &info) == 0 else {
            throw VaultError(.io, "could not inspect \(path): \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw VaultError(.refused, "\(path) is not a folder", hint: "remove it; tallyfy-vault makes it as a private folder")
        }
        guard info.st_uid == geteuid() else {
            throw VaultError(.refused, "\(path) belongs to another user (uid \(info.st_uid))",
                hint: "someone may be trying to read your tokens; remove it, or set XDG_RUNTIME_DIR to your own private folder")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw VaultError(.refused, "\(path) is accessible by other users (mode \(String(info.st_mode & 0o777, radix: 8)))",
                hint: "run `chmod 700 \(path)`")
        }
    }
}

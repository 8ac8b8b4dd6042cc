#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#endif

extension VaultStore {
    /// What `doctor` says about where the vault lives, read without a key:
    /// a file's mode and owner and its folder's mode, or that an etcd
    /// cluster holds a vault (read from the cluster, never the cache).
    /// `readable` is false when nothing more can be checked.
    package func storageChecks() async -> (checks: [DoctorCheck], readable: Bool) {
        if remote != nil {
            do {
                let bytes = try await sealedBytes()
                return ([DoctorCheck("vault location", .ok, "\(path) (\(bytes.count) bytes, sealed)")], true)
            } catch let error as VaultError {
                return ([DoctorCheck("vault location", .fail, error.message, hint: error.hint)], false)
            } catch {
                return ([DoctorCheck("vault location", .fail, "cannot read \(path)")], false)
            }
        }
        var info = stat()
        guard stat(path, &info) == 0 else {
            return ([DoctorCheck("vault file", .fail, "\(path) does not exist",
                hint: "create one with `tallyfy-vault init`, or point --vault / TALLYFY_VAULT_FILE at yours")], false)
        }
        var checks: [DoctorCheck] = []
        do {
            try await checkAccess()
            checks.append(DoctorCheck("vault file", .ok, "\(path) (mode \(String(info.st_mode & 0o777, radix: 8)), owned by you)"))
        } catch let error as VaultError {
            return ([DoctorCheck("vault file", .fail, error.message, hint: error.hint)], false)
        } catch {
            return ([DoctorCheck("vault file", .fail, "cannot open \(path)")], false)
        }
        var folderInfo = stat()
        if stat(directory, &folderInfo) == 0 {
            let mode = folderInfo.st_mode & 0o777
            if mode & 0o077 == 0 {
                checks.append(DoctorCheck("vault folder", .ok, "\(directory) (mode \(String(mode, radix: 8)))"))
            } else {
                checks.append(DoctorCheck("vault folder", .warn, "\(directory) is mode \(String(mode, radix: 8)): others can list it",
                    hint: "chmod 700 \(directory)"))
            }
        }
        return (checks, true)
    }
}

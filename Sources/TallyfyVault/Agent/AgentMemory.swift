import Foundation
import TallyfyVaultCore

/// What the agent does so that a secret it no longer needs is gone from its
/// memory, not only unreferenced (SECURITY.md, "A running, unlocked agent").
///
/// The data key lives in libsodium's guarded memory, zeroed when the last
/// reference goes (`SecretBytes`). But the client secret passes through
/// Swift `String`s and `Data` while a renewal decodes the vault and sends the
/// token request (JSON decoder, form body, AsyncHTTPClient and NIO buffers),
/// and a passphrase given in `TALLYFY_VAULT_PASSPHRASE` through the
/// environment's `String`s; Swift cannot wipe those copies, and freeing them
/// leaves their bytes in the heap until reused. So the agent runs with
/// glibc's allocator told to overwrite every block it frees
/// (`glibc.malloc.perturb`), with its per-thread cache off (a block freed
/// into that cache is not overwritten), and removes the passphrase from its
/// own environment once it has unlocked.
package enum AgentMemory {
    /// Freed blocks are filled with 0xff (and new ones with 0x00, as calloc
    /// gives them); no block is kept in the per-thread cache, which glibc
    /// fills nothing into.
    package static let tunables = "glibc.malloc.perturb=255:glibc.malloc.tcache_count=0"

    /// `GLIBC_TUNABLES` for a process that should run with `tunables`,
    /// keeping any the user set.
    package static func tunablesVariable(_ environment: [String: String]) -> String {
        guard let existing = environment["GLIBC_TUNABLES"], !existing.isEmpty else { return tunables }
        return existing.contains("glibc.malloc.perturb=") ? existing : existing + ":" + tunables
    }

    /// Whether glibc read our tunables when this process started.
    package static var freedMemoryIsOverwritten: Bool {
        guard let value = getenv("GLIBC_TUNABLES") else { return false }
        return String(cString: value).contains("glibc.malloc.perturb=")
    }

    /// Replaces this process with itself, same arguments and environment,
    /// plus `GLIBC_TUNABLES` (glibc reads tunables only when a program
    /// starts). Called first thing by a foreground agent, before any secret
    /// is read; returns only when the tunables are in effect already, or the
    /// exec failed (then the agent runs without them, and says so).
    package static func restartWithFreedMemoryOverwritten(log: (String) -> Void) {
        guard !freedMemoryIsOverwritten else { return }
        guard let executable = ThisProgram.path else {
            log("could not find this program (/proc/self/exe) to restart it with freed memory overwritten; running without")
            return
        }
        setenv("GLIBC_TUNABLES", tunablesVariable(ProcessInfo.processInfo.environment), 1)
        let argv = CommandLine.arguments.map { strdup($0) } + [nil]
        execve(executable, argv, environ)
        let reason = String(cString: strerror(errno))
        argv.forEach { free($0) }
        unsetenv("GLIBC_TUNABLES")
        log("could not restart with freed memory overwritten (\(reason)); running without")
    }

    /// Removes `TALLYFY_VAULT_PASSPHRASE` from the process's environment and
    /// overwrites the string that held it, name and value: the one the kernel
    /// put on the stack (which `/proc/PID/environ` shows) or a copy `setenv`
    /// made. Called once the agent has unlocked.
    package static func forgetPassphraseVariable() {
        let name = UnlockSources.passphraseVariable + "="
        var held: [UnsafeMutablePointer<CChar>] = []
        var entry: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> = environ
        while let pointer = entry.pointee {
            if strncmp(pointer, name, name.utf8.count) == 0 { held.append(pointer) }
            entry += 1
        }
        unsetenv(UnlockSources.passphraseVariable)
        for pointer in held { memset(pointer, 0, strlen(pointer)) }
    }
}

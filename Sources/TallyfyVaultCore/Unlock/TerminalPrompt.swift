#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#endif

/// Reads a secret from the controlling terminal with echo off.
///
/// It talks to `/dev/tty`, not to standard input, so `cmd | tallyfy-vault …`
/// still prompts the person at the keyboard; with no terminal (cron, CI) it
/// fails at once with what to set instead.
package enum TerminalPrompt {
    static let maxLength = 4096
    /// What to give instead of typing, wherever there is no prompt.
    package static let unlockSourcesHint = "give --key-file, --passphrase-file, TALLYFY_VAULT_PASSPHRASE, or a systemd credential tallyfy-vault.key"

    /// A passphrase; with `confirm`, asked twice and compared.
    package static func passphrase(prompt: String, confirm: Bool) throws -> UnlockSecret {
        let first = try readSecret(prompt: prompt)
        guard first.count > 0 else { throw VaultError(.usage, "the passphrase is empty") }
        if confirm {
            let second = try readSecret(prompt: "Repeat it: ")
            let same = first.withUnsafeBytes { a in second.withUnsafeBytes { b in Sodium.equal(a, b) } }
            guard same else { throw VaultError(.usage, "the two passphrases differ; nothing was changed") }
        }
        return UnlockSecret(kind: .passphrase, bytes: first, origin: "the passphrase typed at the prompt")
    }

    /// Whether there is a terminal to prompt on (`/dev/tty` opens).
    package static var isAvailable: Bool {
        let fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return isatty(fd) == 1
    }

    /// A line for the person at the prompt, on the terminal itself (not on
    /// standard error, which may be a log).
    static func tell(_ line: String) {
        let fd = open("/dev/tty", O_WRONLY | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let text = "tallyfy-vault: \(line)\n"
        _ = text.withCString { write(fd, $0, strlen($0)) }
    }

    /// One line typed without echo, in guarded memory.
    package static func readSecret(prompt: String) throws -> SecretBytes {
        let fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0, isatty(fd) == 1 else {
            if fd >= 0 { close(fd) }
            throw VaultError(.configuration, "no key or passphrase was given, and there is no terminal to ask on",
                hint: unlockSourcesHint)
        }
        defer { close(fd) }
        var saved = termios()
        tcgetattr(fd, &saved)
        var quiet = saved
        quiet.c_lflag &= ~tcflag_t(ECHO)
        quiet.c_lflag |= tcflag_t(ICANON)
        // A signal that ends the process while echo is off would leave the
        // terminal silent: the handlers put it back first (EchoGuard).
        EchoGuard.arm(fd: fd, saved: saved)
        tcsetattr(fd, TCSAFLUSH, &quiet)
        defer {
            tcsetattr(fd, TCSAFLUSH, &saved)
            EchoGuard.disarm()
            _ = write(fd, "\n", 1)
        }
        _ = prompt.withCString { write(fd, $0, strlen($0)) }

        var buffer = SecretBytes(count: maxLength)
        let length = buffer.withUnsafeMutableBytes { bytes -> Int in
            var count = 0
            var byte: UInt8 = 0
            while count < bytes.count {
                let n = read(fd, &byte, 1)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 || byte == UInt8(ascii: "\n") { break }
                bytes[count] = byte
                count += 1
            }
            byte = 0
            return count
        }
        return buffer.prefix(length)
    }
}

/// Restores the terminal when SIGINT, SIGTERM, SIGHUP or SIGQUIT arrives at
/// a prompt, then lets the signal end the process as it would have (default
/// action, re-raised), so the shell sees the usual "killed by signal" status.
/// Only async-signal-safe calls run in the handler (`tcsetattr`, `write`,
/// `sigaction`, `raise`).
enum EchoGuard {
    static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]
    nonisolated(unsafe) static var descriptor: Int32 = -1
    nonisolated(unsafe) static var savedTerminal = termios()
    nonisolated(unsafe) static var previous: [Int32: sigaction] = [:]

    static func arm(fd: Int32, saved: termios) {
        descriptor = fd
        savedTerminal = saved
        for signal in signals {
            // A signal ignored by whoever started us (nohup) stays ignored.
            var current = sigaction()
            sigaction(signal, nil, &current)
            if let handler = current.__sigaction_handler.sa_handler, unsafeBitCast(handler, to: Int.self) == 1 { continue }
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { number in
                if EchoGuard.descriptor >= 0 {
                    _ = tcsetattr(EchoGuard.descriptor, TCSANOW, &EchoGuard.savedTerminal)
                    _ = write(EchoGuard.descriptor, "\n", 1)
                }
                var fallback = sigaction()
                fallback.__sigaction_handler.sa_handler = SIG_DFL
                sigemptyset(&fallback.sa_mask)
                sigaction(number, &fallback, nil)
                raise(number)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0
            var old = sigaction()
            sigaction(signal, &action, &old)
            previous[signal] = old
        }
    }

    static func disarm() {
        for (signal, old) in previous {
            var action = old
            sigaction(signal, &action, nil)
        }
        previous = [:]
        descriptor = -1
    }
}

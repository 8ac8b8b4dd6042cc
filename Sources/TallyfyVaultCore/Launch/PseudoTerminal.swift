import CSodium

#if canImport(Glibc)
    import Glibc
#endif

/// The terminal calls `exec --mask` needs on a terminal (C in the shim:
/// `ioctl` and `openpty` take variadic or struct arguments Swift can't pass).
package enum PseudoTerminal {
    /// A pty with the settings and window size of the terminal `like`:
    /// close-on-exec, its master non-blocking; `nil` when none can be made.
    package static func open(like fd: Int32) -> (master: Int32, slave: Int32)? {
        var master: Int32 = -1
        var slave: Int32 = -1
        return tallyfy_open_pty(fd, &master, &slave) == 0 ? (master, slave) : nil
    }

    /// Gives `to` the window size of `from`; false when either is no terminal.
    package static func copyWindowSize(from: Int32, to: Int32) -> Bool {
        tallyfy_copy_window_size(from, to) == 0
    }

    /// Puts the terminal `fd` in raw mode; returns the settings to restore.
    package static func makeRaw(_ fd: Int32) -> termios? {
        var saved = termios()
        return tallyfy_raw_mode(fd, &saved) == 0 ? saved : nil
    }

    package static func restore(_ fd: Int32, _ settings: termios) {
        var settings = settings
        _ = tcsetattr(fd, TCSADRAIN, &settings)
    }
}

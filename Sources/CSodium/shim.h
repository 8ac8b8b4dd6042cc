#ifndef TALLYFY_CSODIUM_SHIM_H
#define TALLYFY_CSODIUM_SHIM_H
#include <sodium.h>

/* prctl is variadic, so Swift can't call it; this fixed-argument
   wrapper is the only non-libsodium C the library needs. */
#include <sys/prctl.h>
static inline int tallyfy_set_dumpable(int dumpable) { return prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0); }

/* `exec --keep-fresh` supervises a child instead of replacing itself. Two
   things it needs cannot be written safely in Swift: a signal handler (it
   must not touch the Swift runtime) and the code between fork and execve in
   a multi-threaded process (only async-signal-safe calls). Both are here,
   small and self-contained. */
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <termios.h>
#include <unistd.h>

static int tallyfy_signal_pipe = -1;

/* Writes one byte per signal to the supervisor's wake pipe: the signal
   number, with 0x80 set when the kernel sent it (a terminal's ^C or window
   change goes to the whole foreground process group, so the child has it
   already and it must not be forwarded twice). */
static void tallyfy_signal_to_pipe(int signal, siginfo_t *info, void *context) {
    (void)context;
    int saved = errno;
    unsigned char byte = (unsigned char)signal;
    if (info != NULL && info->si_code == SI_KERNEL) byte |= 0x80;
    if (tallyfy_signal_pipe >= 0) (void)write(tallyfy_signal_pipe, &byte, 1);
    errno = saved;
}

/* Whether the calling thread is the process's main thread (its thread id
   is the process id): the supervisor watches a child from the main thread,
   else from a thread of its own. */
#include <sys/syscall.h>
static inline int tallyfy_is_main_thread(void) { return syscall(SYS_gettid) == getpid(); }

/* Catches `signal` into the wake pipe `fd` and unblocks it on the calling
   thread (the supervising one). Returns 1 when the signal was
   ignored when we started (e.g. under nohup): it is then left ignored, as a
   shell would, and neither caught nor forwarded. */
static inline int tallyfy_catch_signal(int signal, int fd) {
    struct sigaction old;
    if (sigaction(signal, NULL, &old) == 0 && old.sa_handler == SIG_IGN && signal != SIGCHLD) return 1;
    tallyfy_signal_pipe = fd;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = tallyfy_signal_to_pipe;
    /* SIGCHLD also when a child stops: a supervisor relaying a pty stops
       itself with it (^Z under `exec --mask`). */
    action.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&action.sa_mask);
    if (sigaction(signal, &action, NULL) != 0) return -1;
    /* A parent may have started us with signals blocked (and threads made
       since inherit that): unblock it here, so it reaches this thread. */
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, signal);
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    return 0;
}

/* fork + execve for a supervised child. The child:
   - gets SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), and checks it
     was not orphaned already between fork and prctl;
   - has every signal back at its default disposition (caught ones and
     SIGPIPE) and `child_mask` as its signal mask (the calling thread's
     own may block most signals);
   - gets the core limit the user had (`core`, may be NULL);
   - gets stdio[0..2] as its descriptors 0..2 (`stdio` may be NULL, an
     entry -1 keeps the supervisor's), and when stdio[3] is 1 starts a
     session of its own with descriptor 0 (a pty) as its terminal;
   - reports an execve failure as its errno on `error_pipe` (close-on-exec,
     so a successful execve closes it with nothing written).
   Signals are blocked in the parent around fork so no handler runs in the
   child before its dispositions are reset. Returns the pid, or -1. */
static inline pid_t tallyfy_spawn_supervised(const char *path, char *const argv[], char *const envp[],
    const struct rlimit *core, const sigset_t *child_mask, const int *stdio, int error_pipe) {
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        struct sigaction fallback;
        memset(&fallback, 0, sizeof fallback);
        fallback.sa_handler = SIG_DFL;
        sigemptyset(&fallback.sa_mask);
        for (int signal = 1; signal < NSIG; signal++) {
            struct sigaction current;
            if (sigaction(signal, NULL, &current) != 0) continue;
            if (current.sa_handler != SIG_IGN || signal == SIGPIPE) (void)sigaction(signal, &fallback, NULL);
        }
        if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) != 0 || getppid() != parent) _exit(128 + SIGTERM);
        if (core != NULL) (void)setrlimit(RLIMIT_CORE, core);
        /* stdio: descriptors to put in place of 0, 1, 2 (-1: keep ours). */
        for (int fd = 0; stdio != NULL && fd < 3; fd++) {
            if (stdio[fd] < 0) continue;
            int moved = stdio[fd] == fd ? fcntl(fd, F_SETFD, 0) : dup2(stdio[fd], fd);
            if (moved < 0) {
                int code = errno;
                (void)write(error_pipe, &code, sizeof code);
                _exit(127);
            }
        }
        if (stdio != NULL && stdio[3] == 1 && (setsid() < 0 || ioctl(0, TIOCSCTTY, 0) < 0)) {
            int code = errno;
            (void)write(error_pipe, &code, sizeof code);
            _exit(127);
        }
        pthread_sigmask(SIG_SETMASK, child_mask != NULL ? child_mask : &previous, NULL);
        execve(path, argv, envp);
        int code = errno;
        (void)write(error_pipe, &code, sizeof code);
        _exit(127);
    }
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    errno = saved;
    return pid;
}

/* `exec --mask` on a terminal: a pseudo-terminal with the settings and
   window size of `like` (close-on-exec, the master non-blocking); 0 or -1. */
static inline int tallyfy_open_pty(int like, int *master, int *slave) {
    struct termios settings;
    struct winsize size;
    int have_settings = tcgetattr(like, &settings) == 0;
    int have_size = ioctl(like, TIOCGWINSZ, &size) == 0;
    if (openpty(master, slave, NULL, have_settings ? &settings : NULL, have_size ? &size : NULL) != 0) return -1;
    (void)fcntl(*master, F_SETFD, FD_CLOEXEC);
    (void)fcntl(*slave, F_SETFD, FD_CLOEXEC);
    (void)fcntl(*master, F_SETFL, fcntl(*master, F_GETFL) | O_NONBLOCK);
    return 0;
}

/* The window size of `from` given to `to` (which signals its foreground
   process group with SIGWINCH); 0 or -1. */
static inline int tallyfy_copy_window_size(int from, int to) {
    struct winsize size;
    if (ioctl(from, TIOCGWINSZ, &size) != 0) return -1;
    return ioctl(to, TIOCSWINSZ, &size);
}

/* Raw mode on the terminal `fd` (keys go to the child's pty as they are
   typed, its line discipline does the rest); `saved` gets the settings to
   restore. 0 or -1. */
static inline int tallyfy_raw_mode(int fd, struct termios *saved) {
    if (tcgetattr(fd, saved) != 0) return -1;
    struct termios raw = *saved;
    cfmakeraw(&raw);
    return tcsetattr(fd, TCSADRAIN, &raw);
}
#endif

#ifndef TALLYFY_CSODIUM_SHIM_H
#define TALLYFY_CSODIUM_SHIM_H
#include <sodium.h>

/* prctl is variadic, so Swift can't call it; this fixed-argument
   wrapper is the only non-libsodium C the library needs. */
#include <sys/prctl.h>
static inline int tallyfy_set_dumpable(int dumpable) { return prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0); }
#endif

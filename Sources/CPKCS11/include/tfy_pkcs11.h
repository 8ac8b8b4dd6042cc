/* The few PKCS#11 steps tallyfy-vault takes, over a module loaded with
   dlopen at run time (there is no link-time dependency on any module).
   Swift (Pkcs11Token.swift) parses the URI, maps return values to messages
   and keeps every secret in guarded memory; this file only talks to the
   module. pkcs11.h beside it is p11-kit's (permissive licence, kept in it). */
#ifndef TFY_PKCS11_H
#define TFY_PKCS11_H 1

#include <stddef.h>
#include "pkcs11.h"

/* Vendor-range return values for what PKCS#11 has no code for. */
#define TFY_P11_MODULE_UNLOADABLE 0x8f000001UL /* dlopen failed: see tfy_p11_dlerror */
#define TFY_P11_NOT_A_MODULE 0x8f000002UL      /* no C_GetFunctionList in it */
#define TFY_P11_NO_TOKEN 0x8f000003UL          /* no token matches */
#define TFY_P11_SEVERAL_TOKENS 0x8f000004UL
#define TFY_P11_NO_OBJECT 0x8f000005UL         /* no key matches */
#define TFY_P11_SEVERAL_OBJECTS 0x8f000006UL

/* What a PKCS#11 URI asks for (RFC 7512); NULL / 0 means "any". */
typedef struct {
    const char *token;        /* CKA token label */
    const char *serial;
    const char *manufacturer;
    const char *model;
    const char *object;       /* CKA_LABEL */
    const unsigned char *id;  /* CKA_ID */
    size_t id_len;
    int has_id;
} tfy_p11_match;

typedef struct {
    CK_FUNCTION_LIST_PTR fn;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE session;
    CK_FLAGS token_flags;
    char token_label[33];
    char serial[17];
} tfy_p11_session;

/* Loads the module at path and initialises it (an already initialised
   module is fine). */
CK_RV tfy_p11_load(const char *path, CK_FUNCTION_LIST_PTR *fn);
/* The text of the last dlopen failure, or "". */
const char *tfy_p11_dlerror(void);

/* Finds the one token the match names and opens a read-only session on it. */
CK_RV tfy_p11_open(CK_FUNCTION_LIST_PTR fn, const tfy_p11_match *match, tfy_p11_session *session);

/* The token's flags as it reports them now (PIN count low, final try, locked). */
CK_FLAGS tfy_p11_token_flags(tfy_p11_session *session);

/* Logs the user in, unless the token needs no login. */
CK_RV tfy_p11_login(tfy_p11_session *session, const unsigned char *pin, size_t pin_len);

/* Finds the one key of class cls (CKO_PUBLIC_KEY or CKO_PRIVATE_KEY) the
   match names; its CKA_ID (up to *id_len bytes) and CKA_KEY_TYPE. */
CK_RV tfy_p11_find_key(tfy_p11_session *session, CK_OBJECT_CLASS cls, const tfy_p11_match *match,
                       CK_OBJECT_HANDLE *key, unsigned char *id, size_t *id_len, CK_KEY_TYPE *key_type);

/* Encrypt with a public key or decrypt with a private key on the token:
   RSA-OAEP with SHA-256 and MGF1-SHA-256, no label (CKM_RSA_PKCS_OAEP), or,
   with raw set, bare RSA (CKM_RSA_X_509) for a token that can't do OAEP
   with SHA-256 (the caller then applies OAEP itself). out holds *out_len
   bytes and gets the result's length. */
CK_RV tfy_p11_rsa(tfy_p11_session *session, int decrypt, int raw, CK_OBJECT_HANDLE key,
                  const unsigned char *in, size_t in_len, unsigned char *out, size_t *out_len);

/* The length in bytes of an RSA key's modulus (CKA_MODULUS). */
CK_RV tfy_p11_modulus_length(tfy_p11_session *session, CK_OBJECT_HANDLE key, size_t *length);

/* Ends the session (doctor's look at the token). */
void tfy_p11_close(tfy_p11_session *session);

#endif

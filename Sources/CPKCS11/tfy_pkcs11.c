#include "tfy_pkcs11.h"

#include <dlfcn.h>
#include <string.h>

static char last_dlerror[512];

const char *tfy_p11_dlerror(void) { return last_dlerror; }

CK_RV tfy_p11_load(const char *path, CK_FUNCTION_LIST_PTR *fn) {
    last_dlerror[0] = 0;
    /* RTLD_LOCAL: the module's symbols stay its own; never dlclose'd, as
       many modules do not survive being unloaded. */
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *text = dlerror();
        strncpy(last_dlerror, text ? text : "", sizeof last_dlerror - 1);
        last_dlerror[sizeof last_dlerror - 1] = 0;
        return TFY_P11_MODULE_UNLOADABLE;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
    if (!get) return TFY_P11_NOT_A_MODULE;
    CK_RV rv = get(fn);
    if (rv != CKR_OK) return rv;
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    rv = (*fn)->C_Initialize(&args);
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) rv = CKR_OK;
    return rv;
}

/* A PKCS#11 text field: fixed length, padded with spaces. */
static int field_matches(const unsigned char *field, size_t length, const char *wanted) {
    if (!wanted) return 1;
    size_t end = length;
    while (end > 0 && (field[end - 1] == ' ' || field[end - 1] == 0)) end--;
    return strlen(wanted) == end && memcmp(field, wanted, end) == 0;
}

static void copy_field(char *out, const unsigned char *field, size_t length) {
    size_t end = length;
    while (end > 0 && (field[end - 1] == ' ' || field[end - 1] == 0)) end--;
    memcpy(out, field, end);
    out[end] = 0;
}

CK_RV tfy_p11_open(CK_FUNCTION_LIST_PTR fn, const tfy_p11_match *match, tfy_p11_session *session) {
    memset(session, 0, sizeof *session);
    session->fn = fn;
    CK_ULONG count = 0;
    CK_RV rv = fn->C_GetSlotList(CK_TRUE, NULL, &count);
    if (rv != CKR_OK) return rv;
    if (count == 0) return TFY_P11_NO_TOKEN;
    if (count > 256) count = 256;
    CK_SLOT_ID slots[256];
    rv = fn->C_GetSlotList(CK_TRUE, slots, &count);
    if (rv != CKR_OK) return rv;
    int found = 0;
    CK_TOKEN_INFO chosen;
    for (CK_ULONG i = 0; i < count; i++) {
        CK_TOKEN_INFO info;
        if (fn->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
        /* An uninitialised token (SoftHSM2's spare slot) holds no key. */
        if (!(info.flags & CKF_TOKEN_INITIALIZED)) continue;
        if (!field_matches(info.label, sizeof info.label, match->token)) continue;
        if (!field_matches(info.serialNumber, sizeof info.serialNumber, match->serial)) continue;
        if (!field_matches(info.manufacturerID, sizeof info.manufacturerID, match->manufacturer)) continue;
        if (!field_matches(info.model, sizeof info.model, match->model)) continue;
        found++;
        session->slot = slots[i];
        chosen = info;
    }
    if (found == 0) return TFY_P11_NO_TOKEN;
    if (found > 1) return TFY_P11_SEVERAL_TOKENS;
    session->token_flags = chosen.flags;
    copy_field(session->token_label, chosen.label, sizeof chosen.label);
    copy_field(session->serial, chosen.serialNumber, sizeof chosen.serialNumber);
    return fn->C_OpenSession(session->slot, CKF_SERIAL_SESSION, NULL, NULL, &session->session);
}

CK_FLAGS tfy_p11_token_flags(tfy_p11_session *session) {
    CK_TOKEN_INFO info;
    if (session->fn->C_GetTokenInfo(session->slot, &info) != CKR_OK) return session->token_flags;
    session->token_flags = info.flags;
    return info.flags;
}

CK_RV tfy_p11_login(tfy_p11_session *session, const unsigned char *pin, size_t pin_len) {
    if (!(session->token_flags & CKF_LOGIN_REQUIRED)) return CKR_OK;
    CK_RV rv = session->fn->C_Login(session->session, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin_len);
    if (rv == CKR_USER_ALREADY_LOGGED_IN) rv = CKR_OK;
    return rv;
}

CK_RV tfy_p11_find_key(tfy_p11_session *session, CK_OBJECT_CLASS cls, const tfy_p11_match *match,
                       CK_OBJECT_HANDLE *key, unsigned char *id, size_t *id_len, CK_KEY_TYPE *key_type) {
    CK_ATTRIBUTE template[3];
    CK_ULONG n = 0;
    template[n].type = CKA_CLASS; template[n].pValue = &cls; template[n].ulValueLen = sizeof cls; n++;
    if (match->object) {
        template[n].type = CKA_LABEL; template[n].pValue = (void *)match->object;
        template[n].ulValueLen = strlen(match->object); n++;
    }
    if (match->has_id) {
        template[n].type = CKA_ID; template[n].pValue = (void *)match->id; template[n].ulValueLen = match->id_len; n++;
    }
    CK_FUNCTION_LIST_PTR fn = session->fn;
    CK_RV rv = fn->C_FindObjectsInit(session->session, template, n);
    if (rv != CKR_OK) return rv;
    CK_OBJECT_HANDLE found[2];
    CK_ULONG count = 0;
    rv = fn->C_FindObjects(session->session, found, 2, &count);
    fn->C_FindObjectsFinal(session->session);
    if (rv != CKR_OK) return rv;
    if (count == 0) return TFY_P11_NO_OBJECT;
    if (count > 1) return TFY_P11_SEVERAL_OBJECTS;
    *key = found[0];
    CK_ATTRIBUTE attributes[2] = {
        {CKA_ID, id, *id_len},
        {CKA_KEY_TYPE, key_type, sizeof *key_type},
    };
    rv = fn->C_GetAttributeValue(session->session, *key, attributes, 2);
    if (rv != CKR_OK) return rv;
    *id_len = attributes[0].ulValueLen;
    return CKR_OK;
}

CK_RV tfy_p11_modulus_length(tfy_p11_session *session, CK_OBJECT_HANDLE key, size_t *length) {
    CK_ATTRIBUTE attribute = {CKA_MODULUS, NULL, 0};
    CK_RV rv = session->fn->C_GetAttributeValue(session->session, key, &attribute, 1);
    if (rv != CKR_OK) return rv;
    *length = attribute.ulValueLen;
    return CKR_OK;
}

CK_RV tfy_p11_rsa(tfy_p11_session *session, int decrypt, int raw, CK_OBJECT_HANDLE key,
                  const unsigned char *in, size_t in_len, unsigned char *out, size_t *out_len) {
    CK_RSA_PKCS_OAEP_PARAMS params;
    memset(&params, 0, sizeof params);
    params.hashAlg = CKM_SHA256;
    params.mgf = CKG_MGF1_SHA256;
    params.source = CKZ_DATA_SPECIFIED;
    CK_MECHANISM mechanism = {CKM_RSA_PKCS_OAEP, &params, sizeof params};
    if (raw) {
        mechanism.mechanism = CKM_RSA_X_509;
        mechanism.pParameter = NULL;
        mechanism.ulParameterLen = 0;
    }
    CK_FUNCTION_LIST_PTR fn = session->fn;
    CK_ULONG length = *out_len;
    CK_RV rv;
    if (decrypt) {
        rv = fn->C_DecryptInit(session->session, &mechanism, key);
        if (rv != CKR_OK) return rv;
        rv = fn->C_Decrypt(session->session, (CK_BYTE_PTR)in, in_len, out, &length);
    } else {
        rv = fn->C_EncryptInit(session->session, &mechanism, key);
        if (rv != CKR_OK) return rv;
        rv = fn->C_Encrypt(session->session, (CK_BYTE_PTR)in, in_len, out, &length);
    }
    *out_len = length;
    return rv;
}

void tfy_p11_close(tfy_p11_session *session) { session->fn->C_CloseSession(session->session); }

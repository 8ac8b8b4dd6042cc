"""What tools/partition-test records about a token: a fingerprint and the
claims the emulator put in it (jti, exp, kind), never the token itself."""
import base64
import hashlib
import json


def describe(token):
    """{"fp", "jti", "exp", "kind"} for an emulator JWT, None for anything else."""
    token = token.strip()
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return {"fp": hashlib.sha256(token.encode()).hexdigest()[:16], "jti": payload.get("jti"),
            "exp": payload.get("exp"), "kind": payload.get("kind")}


def secret_id(secret):
    """The digest `tallyfy-vault-fixture secret-digest` prints: BLAKE2b-128, hex."""
    return hashlib.blake2b(secret.encode(), digest_size=16).hexdigest()

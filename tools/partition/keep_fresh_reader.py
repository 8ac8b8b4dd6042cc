#!/usr/bin/env python3
"""The child of `exec --keep-fresh` in tools/partition-test: reads
$TALLYFY_TOKEN_FILE every half second, as a long-running program would before
each call, and appends what it found to OUT as JSON lines {"at","fp","jti",
"exp","kind"} (a fingerprint and the token's claims, never the token)."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokens import describe  # noqa: E402

out = open(sys.argv[1], "a", buffering=1)
path = os.environ["TALLYFY_TOKEN_FILE"]
while True:
    at = time.time()
    try:
        with open(path) as f:
            token = f.read().strip()
        record = describe(token)
    except OSError as error:
        record = {"error": error.strerror}
    out.write(json.dumps(dict(record or {"error": "unreadable token"}, at=at)) + "\n")
    time.sleep(0.5)

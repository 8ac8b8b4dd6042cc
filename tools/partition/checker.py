#!/usr/bin/env python3
"""The checker of tools/partition-test: reads a recorded history (JSON lines)
and reports every violation of the fleet's five invariants, with the records
involved. It knows nothing of how the history was made, so a test can feed it
a history with a violation planted (tools/partition/test_checker.py).

Records (one JSON object a line, times in Unix seconds):
  {"type":"config", "token_ttl", "refresh_ahead", "revoke_on_reissue", ...}
  {"type":"op", "client", "op", "start", "end", "status", "token":{"fp","jti","exp","kind"}|null,
   "secret": digest|null, "source": "cluster"|"cache" (reads)}
      op: exec, probe (after the last heal), rotate, user-token, keep-fresh-read
      (the token an `exec --keep-fresh` child found in its file; start = end),
      read (the harness reading which secret the vault holds)
  {"type":"fault", "kind", "start", "healing", "end", "no_quorum":[clients], "no_tallyfy":[clients],
   "degraded":[clients]}   who could not reach a quorum of etcd members, or Tallyfy, meanwhile
      (in place from "start"; the heal began at "healing" and was done by "end")
  {"type":"request", "client", "at", "path": "token"|"user-token"}   seen leaving a client
  {"type":"issued", "jti", "kind", "holder", "iat", "exp", "at"}     the emulator's record
  {"type":"healed", "at"}   the last fault healed

Invariants (the issue's numbering):
  1 every operation ends 0, 69 or 75; never 65 (unreadable) or anything else
  2 every acknowledged rotate-secret is durable: a read of the vault's secret
    returns the newest acknowledged rotation's secret or a later one
    (a register with unique values: no stale read, no value nobody wrote,
    no value of a rotation that reported failure)
  3 at most one application-token request per expiry window for the fleet,
    and none from a client that could not reach a quorum
  4 no hand-out of an expired token, nor (--revoke-on-reissue) of one revoked
    before the hand-out began, by a client that could reach a quorum (a token
    an `exec --keep-fresh` child still finds in its file after another machine
    revoked it was handed out before: counted in the figures, not a violation)
  5 after the last heal every client serves the fleet's current token within
    the recovery limit
"""
import json
import sys
from collections import Counter, defaultdict

# The emulator writes `exp` in whole seconds from a clock it floors, while
# the vault counts a token's life from when the answer arrived: the two may
# differ by up to a second, so "expired" means past `exp` by more than this.
EXPIRY_ROUNDING = 1.0
# A token is revoked when its successor is issued, but nobody can know of the
# successor before the machine that got it has committed it to etcd and the
# others' agents have seen the change: a hand-out that began this soon after
# the revocation is not counted. (Seen: up to 1.8 s on 2 busy cores, with
# two runs and other builds at once.)
REVOCATION_NOTICE = 2.0
# How long after losing the quorum a client may still send a token request
# that it decided on before (it held the fleet lock and had read the vault).
QUORUM_GRACE = 3.0
# Slack between two renewals of one expiry window (rounding of `exp`, jitter).
WINDOW_SLACK = 1.5
RECOVERY_LIMIT = 5.0
ALLOWED_STATUS = {0, 69, 75}


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class History:
    def __init__(self, records):
        self.config = next((r for r in records if r["type"] == "config"), {})
        self.ops = [r for r in records if r["type"] == "op"]
        self.faults = [r for r in records if r["type"] == "fault"]
        self.requests = sorted((r for r in records if r["type"] == "request"), key=lambda r: r["at"])
        self.issued = sorted((r for r in records if r["type"] == "issued"), key=lambda r: r["at"])
        healed = [r["at"] for r in records if r["type"] == "healed"]
        self.healed = max(healed) if healed else None

    def without_quorum(self, client, start, end):
        """The faults that certainly kept `client` from a quorum at some time
        in [start, end]: from when the fault was in place until its heal
        began ("healing"; the heal takes effect before "end" is stamped)."""
        return [f for f in self.faults
                if client in f.get("no_quorum", []) and f["start"] <= end and f.get("healing", f["end"]) >= start]

    def quorum_throughout(self, client, start, end):
        return not any(f["start"] <= end and f["end"] >= start and
                       (client in f.get("no_quorum", []) or client in f.get("degraded", []))
                       for f in self.faults)

    def tallyfy_throughout(self, client, start, end):
        return not any(f["start"] <= end and f["end"] >= start and client in f.get("no_tallyfy", [])
                       for f in self.faults)


def brief(record):
    """A record as a violation shows it: everything but bulky fields."""
    return dict(record)


def check(records):
    """Returns (violations, figures). Each violation: {"invariant", "what", "records"}."""
    h = History(records)
    violations = []

    def violation(invariant, what, *involved):
        violations.append({"invariant": invariant, "what": what, "records": [brief(r) for r in involved]})

    # 1. Never unreadable; only success, 69 or 75.
    for op in h.ops:
        status = op.get("status")
        if status == 65:
            violation(1, f"{op['op']} on {op['client']} found the vault unreadable or corrupt (65)", op)
        elif status not in ALLOWED_STATUS:
            violation(1, f"{op['op']} on {op['client']} ended {status}: only 0, 69 or 75 may happen", op)

    # 2. Acknowledged rotations are durable (a register with unique values).
    writes = [op for op in h.ops if op["op"] == "rotate" and op.get("secret")]
    by_secret = defaultdict(list)
    for w in writes:
        by_secret[w["secret"]].append(w)
    reads = [op for op in h.ops if op["op"] == "read" and op.get("status") == 0
             and op.get("source", "cluster") == "cluster" and op.get("secret")]
    for r in reads:
        candidates = by_secret.get(r["secret"], [])
        if not candidates:
            violation(2, "a read found a secret no rotation wrote", r)
            continue
        w = min(candidates, key=lambda c: c["start"])
        if w["start"] > r["end"]:
            violation(2, "a read found a secret whose rotation began only after the read", r, w)
            continue
        if w.get("status") != 0:
            violation(2, f"a rotation that reported failure ({w.get('status')}: nothing changed) took effect", r, w)
        lost = [w2 for w2 in writes if w2.get("status") == 0 and w2 is not w
                and w2["start"] > w["end"] and w2["end"] < r["start"]]
        for w2 in lost:
            violation(2, "an acknowledged rotation was lost: a later read found an older secret", w2, w, r)

    # 3. One application-token request per expiry window; none without quorum.
    ttl = h.config.get("token_ttl")
    ahead = h.config.get("refresh_ahead", 0)
    rotations = [op for op in h.ops if op["op"] == "rotate" and op["client"] != "setup"]
    app_requests = [q for q in h.requests if q["path"] == "token"]
    used = set()

    def requester(token):
        # The latest token request that left a client before the token was
        # issued and is not yet matched to another token.
        best = None
        for i, q in enumerate(app_requests):
            if q["at"] > token["at"]:
                break
            if i not in used and token["at"] - q["at"] <= 20:
                best = i
        if best is None:
            return None
        used.add(best)
        return app_requests[best]

    sends = defaultdict(list)
    for r in records:
        if r["type"] == "send" and r["path"] == "token":
            sends[r["client"]].append(r["at"])
    last_arrival = {}

    def sent(q):
        # When the request that reached Tallyfy at q["at"] left its machine:
        # the earliest send from that machine since its previous request
        # arrived. The vault counts a token's life from there (it errs on
        # the early side), so a request held up by a cut makes the token look
        # shorter-lived, and the next renewal is due earlier by as much.
        after = last_arrival.get(q["client"], 0)
        last_arrival[q["client"]] = q["at"]
        times = [t for t in sends.get(q["client"], []) if after < t <= q["at"] and q["at"] - t <= 20]
        return min(times) if times else q["at"]

    app_tokens = [t for t in h.issued if t["kind"] == "application"]
    rotation_caused = 0
    renewal_gaps = []
    previous = None
    previous_counted_from = None
    for token in app_tokens:
        q = requester(token)
        client = q["client"] if q else None
        counted_from = sent(q) if q else token["at"]
        by_rotation = client is not None and any(
            op["client"] == client and op["start"] <= token["at"] <= op["end"] for op in rotations)
        rotation_caused += by_rotation
        during_setup = token["at"] < h.config.get("begin", 0)
        if previous is not None and not by_rotation and not during_setup and ttl:
            gap = token["at"] - previous_counted_from
            renewal_gaps.append(gap)
            window = ttl - ahead - WINDOW_SLACK
            if gap < window:
                violation(3, f"two application tokens {token['at'] - previous['at']:.2f} s apart ({gap:.2f} s after "
                             f"the first was requested), within one expiry window (renewals are due "
                             f"{ttl - ahead:.1f} s apart)", previous, token, *([q] if q else []))
        previous = token
        previous_counted_from = counted_from
    for q in h.requests:
        lost = [f for f in h.without_quorum(q["client"], q["at"], q["at"]) if f["start"] <= q["at"] - QUORUM_GRACE]
        if lost:
            violation(3, f"{q['client']} requested a token {q['at'] - lost[0]['start']:.1f} s after it lost the "
                         f"quorum ({lost[0]['kind']}): it renewed alone", q, lost[0])

    # 4. No expired or revoked token handed out.
    successor = {}
    last_by_holder = {}
    for token in h.issued:
        if token["holder"] in last_by_holder:
            successor[last_by_holder[token["holder"]]["jti"]] = token
        last_by_holder[token["holder"]] = token
    revoke = h.config.get("revoke_on_reissue", False)
    held_revoked = []
    for op in h.ops:
        token = op.get("token")
        if op.get("status") != 0 or not token:
            continue
        began = op["start"]
        if op["op"] == "keep-fresh-read":
            # The file may hold an expired token only while renewing was impossible.
            window = (began - (ttl or 0), began)
            if (began > token["exp"] + EXPIRY_ROUNDING and h.quorum_throughout(op["client"], *window)
                    and h.tallyfy_throughout(op["client"], *window)):
                violation(4, f"{op['client']}'s keep-fresh file held a token expired {began - token['exp']:.1f} s "
                             "although etcd and Tallyfy were reachable for a whole token lifetime", op)
        elif began > token["exp"] + EXPIRY_ROUNDING:
            violation(4, f"{op['op']} on {op['client']} handed out a token expired {began - token['exp']:.1f} s before", op)
        if revoke and token["jti"] in successor:
            revoked_at = successor[token["jti"]]["at"]
            if op["op"] == "keep-fresh-read":
                # Not a hand-out: the file was written before the revocation
                # (by a renewal on another machine or a rotation); the child
                # keeps it until its own renewal. Counted, not a violation
                # (docs/fleet.md, "What the fleet does not promise").
                if began > revoked_at + REVOCATION_NOTICE:
                    held_revoked.append(began - revoked_at)
            elif began > revoked_at + REVOCATION_NOTICE and h.quorum_throughout(op["client"], revoked_at, op["end"]):
                violation(4, f"{op['op']} on {op['client']} handed out a token revoked {began - revoked_at:.1f} s "
                             "before, with a quorum reachable", op, successor[token["jti"]])

    # 5. Recovery after the last heal.
    recoveries = {}
    if h.healed is not None:
        clients = h.config.get("clients") or sorted({op["client"] for op in h.ops if op["op"] == "probe"})

        def current(t):
            newest = None
            for token in app_tokens:
                if token["at"] > t:
                    break
                newest = token
            return newest

        for client in clients:
            probes = sorted((op for op in h.ops if op["op"] == "probe" and op["client"] == client
                             and op["start"] >= h.healed), key=lambda op: op["start"])
            served = next((p for p in probes if p.get("status") == 0 and p.get("token") and
                           any(c and c["jti"] == p["token"]["jti"] for c in (current(p["start"]), current(p["end"])))),
                          None)
            if served is None:
                violation(5, f"{client} never served the fleet's current token after the last heal",
                          {"type": "healed", "at": h.healed}, *probes[-1:])
                continue
            recoveries[client] = served["end"] - h.healed
            if recoveries[client] > RECOVERY_LIMIT:
                violation(5, f"{client} served the fleet's current token only {recoveries[client]:.1f} s after the "
                             f"last heal (limit {RECOVERY_LIMIT:.0f} s)", {"type": "healed", "at": h.healed}, served)

    # Not a violation, but what users see: operations that failed although
    # their machine reached a quorum and Tallyfy throughout (a leader election,
    # a paused or killed member: the cluster itself was still there).
    avoidable = [op for op in h.ops if op.get("status") in (69, 75) and op["client"] in h.config.get("clients", [])
                 and h.quorum_throughout(op["client"], op["start"], op["end"])
                 and h.tallyfy_throughout(op["client"], op["start"], op["end"])]

    figures = {
        "failed_with_quorum_and_tallyfy": dict(Counter(f"{op['op']} {op['status']}" for op in avoidable)),
        "failed_with_quorum_and_tallyfy_messages": dict(Counter(
            (op.get("stderr") or "").split(" | ")[0][:160] for op in avoidable)),
        "faults": dict(Counter(f["kind"] for f in h.faults)),
        "operations": dict(Counter(op["op"] for op in h.ops)),
        "statuses": {f"{k[0]} {k[1]}": v for k, v in sorted(Counter((op["op"], op.get("status")) for op in h.ops).items(),
                                                           key=lambda kv: str(kv[0]))},
        "token_requests": len(app_requests),
        "user_token_requests": sum(1 for q in h.requests if q["path"] == "user-token"),
        "application_tokens_issued": len(app_tokens),
        "issued_by_rotations": rotation_caused,
        "shortest_gap_between_renewals": round(min(renewal_gaps), 2) if renewal_gaps else None,
        "recovery_seconds": {c: round(v, 2) for c, v in recoveries.items()},
        "longest_recovery": round(max(recoveries.values()), 2) if recoveries else None,
        "keep_fresh_readings_of_a_revoked_token": len(held_revoked),
        "keep_fresh_longest_held_revoked_seconds": round(max(held_revoked), 2) if held_revoked else None,
        "violations": dict(Counter(str(v["invariant"]) for v in violations)),
    }
    return violations, figures


def report(violations, figures, out=sys.stdout):
    print(json.dumps(figures, indent=1, sort_keys=True), file=out)
    for v in violations:
        print(f"VIOLATION of invariant {v['invariant']}: {v['what']}", file=out)
        for r in v["records"]:
            print(f"    {json.dumps(r, sort_keys=True)}", file=out)
    print(f"{len(violations)} violation(s)", file=out)


def main(argv):
    if len(argv) != 2:
        print("usage: checker.py HISTORY.jsonl", file=sys.stderr)
        return 64
    violations, figures = check(load(argv[1]))
    report(violations, figures)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

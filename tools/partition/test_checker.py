#!/usr/bin/env python3
"""The checker of tools/partition-test catches each kind of violation: a clean
history passes, and the same history with one violation planted fails with
exactly that invariant. Run by tools/test (`python3 -m unittest` here)."""
import copy
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checker  # noqa: E402

T0 = 1_800_000_000.0
TTL = 12


def token(jti, issued_at):
    return {"fp": "f" + jti, "jti": jti, "exp": int(issued_at) + TTL, "kind": "application"}


def clean_history():
    """Three clients, renewals every 9 s, one acknowledged rotation, a
    partition of c3 with no request from it, recovery 1 s after the heal."""
    h = [{"type": "config", "token_ttl": TTL, "refresh_ahead": 3.6, "revoke_on_reissue": True,
          "clients": ["c1", "c2", "c3"], "begin": T0},
         {"type": "op", "client": "setup", "op": "rotate", "start": T0, "end": T0, "status": 0, "secret": "s0"}]
    issued = {}
    for n, at in enumerate([T0 + 1, T0 + 10, T0 + 19, T0 + 28, T0 + 37]):
        jti = f"j{n}"
        issued[jti] = at
        client = ["c1", "c2", "c1", "c2", "c1"][n]
        h.append({"type": "request", "client": client, "at": at - 0.05, "path": "token"})
        h.append({"type": "issued", "jti": jti, "kind": "application", "holder": "application 40213",
                  "iat": int(at), "exp": int(at) + TTL, "at": at})
    for n, jti in enumerate(["j0", "j1", "j2", "j3"]):
        at = issued[jti] + 2
        h.append({"type": "op", "client": ["c1", "c2", "c3", "c1"][n], "op": "exec", "start": at, "end": at + 0.2,
                  "status": 0, "token": token(jti, issued[jti])})
    h.append({"type": "op", "client": "c2", "op": "exec", "start": T0 + 14, "end": T0 + 29, "status": 69,
              "token": None, "stderr": "tallyfy-vault: etcd … is unreachable"})
    h.append({"type": "op", "client": "c2", "op": "rotate", "start": T0 + 15, "end": T0 + 15.5, "status": 0, "secret": "s1"})
    h.append({"type": "op", "client": "observer", "op": "read", "start": T0 + 16, "end": T0 + 16.2, "status": 0,
              "secret": "s1", "source": "cluster"})
    h.append({"type": "fault", "kind": "etcd-cut", "start": T0 + 20, "end": T0 + 30, "no_quorum": ["c3"],
              "no_tallyfy": [], "degraded": []})
    # A request c3 decided on before the cut, within the grace: allowed.
    h.append({"type": "request", "client": "c3", "at": T0 + 21, "path": "user-token"})
    # A token revoked (j2 by j3) handed out by c3 while it had no quorum: allowed.
    h.append({"type": "op", "client": "c3", "op": "exec", "start": T0 + 29, "end": T0 + 29.1, "status": 0,
              "token": token("j2", issued["j2"])})
    h.append({"type": "op", "client": "c1", "op": "keep-fresh-read", "start": T0 + 30, "end": T0 + 30, "status": 0,
              "token": token("j3", issued["j3"])})
    h.append({"type": "healed", "at": T0 + 36})
    for client in ["c1", "c2", "c3"]:
        h.append({"type": "op", "client": client, "op": "probe", "start": T0 + 37.5, "end": T0 + 37.8, "status": 0,
                  "token": token("j4", issued["j4"])})
    return h


def violations(history):
    found, _ = checker.check(history)
    return found


class CheckerCatchesEachViolation(unittest.TestCase):
    def assertOnly(self, history, invariant, words):
        found = violations(history)
        self.assertTrue(found, f"the planted violation of invariant {invariant} was not found")
        self.assertEqual({v["invariant"] for v in found}, {invariant}, found)
        self.assertTrue(any(words in v["what"] for v in found), found)

    def test_clean_history_passes(self):
        self.assertEqual(violations(clean_history()), [])

    def test_1_unreadable_vault(self):
        h = clean_history()
        h.append({"type": "op", "client": "c1", "op": "exec", "start": T0 + 5, "end": T0 + 5.1, "status": 65, "token": None})
        self.assertOnly(h, 1, "unreadable or corrupt (65)")

    def test_1_unexpected_status(self):
        h = clean_history()
        h.append({"type": "op", "client": "c2", "op": "user-token", "start": T0 + 5, "end": T0 + 5.1, "status": 77})
        self.assertOnly(h, 1, "ended 77")

    def test_2_lost_acknowledged_rotation(self):
        h = clean_history()
        h.append({"type": "op", "client": "observer", "op": "read", "start": T0 + 17, "end": T0 + 17.1, "status": 0,
                  "secret": "s0", "source": "cluster"})
        self.assertOnly(h, 2, "acknowledged rotation was lost")

    def test_2_failed_rotation_took_effect(self):
        h = clean_history()
        h.append({"type": "op", "client": "c1", "op": "rotate", "start": T0 + 17, "end": T0 + 18, "status": 69, "secret": "s2"})
        h.append({"type": "op", "client": "observer", "op": "read", "start": T0 + 19, "end": T0 + 19.1, "status": 0,
                  "secret": "s2", "source": "cluster"})
        self.assertOnly(h, 2, "reported failure")

    def test_2_secret_nobody_wrote(self):
        h = clean_history()
        h.append({"type": "op", "client": "observer", "op": "read", "start": T0 + 19, "end": T0 + 19.1, "status": 0,
                  "secret": "s9", "source": "cluster"})
        self.assertOnly(h, 2, "no rotation wrote")

    def test_2_a_read_from_the_cache_is_not_a_register_read(self):
        h = clean_history()
        h.append({"type": "op", "client": "observer", "op": "read", "start": T0 + 17, "end": T0 + 17.1, "status": 0,
                  "secret": "s0", "source": "cache"})
        self.assertEqual(violations(h), [])

    def test_3_two_requests_in_one_window(self):
        h = clean_history()
        h.append({"type": "request", "client": "c2", "at": T0 + 12, "path": "token"})
        h.append({"type": "issued", "jti": "jx", "kind": "application", "holder": "application 40213",
                  "iat": int(T0 + 12), "exp": int(T0 + 12) + TTL, "at": T0 + 12.05})
        found = violations(h)
        self.assertTrue(found)
        self.assertTrue(all(v["invariant"] == 3 for v in found), found)
        self.assertTrue(any("within one expiry window" in v["what"] for v in found), found)

    def test_3_a_rotation_may_get_a_token_mid_window(self):
        # rotate-secret proves the new secret with a token of its own: that
        # request is not a second renewal. (The rotation seals that token, so
        # the next renewal is due a window after it: j2 at +19 is then early.)
        h = clean_history()
        h.append({"type": "request", "client": "c2", "at": T0 + 15.2, "path": "token"})
        h.append({"type": "issued", "jti": "jr", "kind": "application", "holder": "application 40213",
                  "iat": int(T0 + 15), "exp": int(T0 + 15) + TTL, "at": T0 + 15.25})
        found = [v for v in violations(h) if v["invariant"] == 3]
        self.assertEqual([v["records"][1]["jti"] for v in found], ["j2"], found)

    def test_3_setup_logins_before_the_run_are_not_counted(self):
        h = clean_history()
        for at in (T0 - 2, T0 - 1.5):
            h.append({"type": "request", "client": "observer", "at": at - 0.01, "path": "token"})
            h.append({"type": "issued", "jti": f"s{at}", "kind": "application", "holder": "application 40213",
                      "iat": int(at), "exp": int(at) + TTL, "at": at})
        self.assertEqual([v for v in violations(h) if v["records"][1].get("at", 0) < T0], [])

    def test_3_the_window_counts_from_when_the_request_left_its_machine(self):
        # A rotation's token request held up 5 s by a cut: the vault counts
        # the token's life from when it sent the request, so the next renewal
        # is due 5 s early, and is not a second request in the window.
        h = [r for r in clean_history() if not (r["type"] in ("issued", "request") and r.get("at", 0) > T0 + 18)]
        h.append({"type": "op", "client": "c1", "op": "rotate", "start": T0 + 14, "end": T0 + 19.1, "status": 0,
                  "secret": "s2"})
        h.append({"type": "send", "client": "c1", "at": T0 + 14.1, "path": "token"})
        h.append({"type": "request", "client": "c1", "at": T0 + 19, "path": "token"})
        h.append({"type": "issued", "jti": "jr", "kind": "application", "holder": "application 40213",
                  "iat": int(T0 + 19), "exp": int(T0 + 19) + TTL, "at": T0 + 19.01})
        h.append({"type": "request", "client": "c2", "at": T0 + 22.6, "path": "token"})
        h.append({"type": "issued", "jti": "jn", "kind": "application", "holder": "application 40213",
                  "iat": int(T0 + 22), "exp": int(T0 + 22) + TTL, "at": T0 + 22.61})
        h = [r for r in h if not (r["type"] == "op" and r["op"] in ("probe", "read") or r["type"] == "healed")]
        self.assertEqual([v for v in violations(h) if v["invariant"] == 3], [])
        # Without the record of when it was sent, the same renewal is early.
        h = [r for r in h if r["type"] != "send"]
        self.assertTrue([v for v in violations(h) if v["invariant"] == 3])

    def test_3_request_without_quorum(self):
        h = clean_history()
        h.append({"type": "request", "client": "c3", "at": T0 + 26, "path": "token"})
        found = violations(h)
        self.assertTrue(any(v["invariant"] == 3 and "renewed alone" in v["what"] for v in found), found)

    def test_3_a_request_once_the_heal_began_is_not_renewing_alone(self):
        # Seen: a request 9 ms before the heal was stamped done, the rules
        # already removed. Only a request before the heal began is certain.
        h = clean_history()
        cut = next(r for r in h if r["type"] == "fault" and r["kind"] == "etcd-cut")
        cut["healing"] = cut["end"] - 0.05
        h.append({"type": "request", "client": "c3", "at": cut["end"] - 0.01, "path": "token"})
        self.assertFalse([v for v in violations(h) if "renewed alone" in v["what"]])
        h.append({"type": "request", "client": "c3", "at": cut["healing"] - 0.01, "path": "token"})
        self.assertTrue([v for v in violations(h) if "renewed alone" in v["what"]])

    def test_4_expired_token_handed_out(self):
        h = clean_history()
        h.append({"type": "op", "client": "c1", "op": "exec", "start": T0 + 15, "end": T0 + 15.1, "status": 0,
                  "token": token("j0", T0 + 1)})
        found = violations(h)
        self.assertTrue(any(v["invariant"] == 4 and "expired" in v["what"] for v in found), found)

    def test_4_revoked_token_handed_out(self):
        h = clean_history()
        h.append({"type": "op", "client": "c1", "op": "exec", "start": T0 + 12.5, "end": T0 + 12.6, "status": 0,
                  "token": token("j0", T0 + 1)})
        self.assertOnly(h, 4, "revoked")

    def test_4_revocation_counts_only_with_revoke_on_reissue(self):
        h = clean_history()
        h[0] = dict(h[0], revoke_on_reissue=False)
        h.append({"type": "op", "client": "c1", "op": "exec", "start": T0 + 12, "end": T0 + 12.1, "status": 0,
                  "token": token("j0", T0 + 1)})
        self.assertEqual(violations(h), [])

    def test_4_keep_fresh_file_expired_while_renewing_was_possible(self):
        h = clean_history()
        h.append({"type": "op", "client": "c2", "op": "keep-fresh-read", "start": T0 + 16, "end": T0 + 16, "status": 0,
                  "token": token("j0", T0 + 1)})
        found = violations(h)
        self.assertTrue(any(v["invariant"] == 4 and "keep-fresh" in v["what"] for v in found), found)

    def test_4_a_keep_fresh_file_outlived_by_a_revocation_is_counted_not_a_violation(self):
        h = clean_history()
        h.append({"type": "op", "client": "c2", "op": "keep-fresh-read", "start": T0 + 12.5, "end": T0 + 12.5,
                  "status": 0, "token": token("j0", T0 + 1)})
        found, figures = checker.check(h)
        self.assertEqual(found, [])
        self.assertEqual(figures["keep_fresh_readings_of_a_revoked_token"], 1)

    def test_5_client_never_recovers(self):
        h = [r for r in clean_history() if not (r.get("op") == "probe" and r["client"] == "c3")]
        h.append({"type": "op", "client": "c3", "op": "probe", "start": T0 + 37.5, "end": T0 + 37.6, "status": 69})
        self.assertOnly(h, 5, "never served")

    def test_5_client_recovers_too_late(self):
        h = clean_history()
        for r in h:
            if r.get("op") == "probe" and r["client"] == "c2":
                r["start"], r["end"] = T0 + 41.5, T0 + 41.9
        self.assertOnly(h, 5, "only 5.9 s after")


if __name__ == "__main__":
    unittest.main()

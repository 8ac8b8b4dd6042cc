#!/usr/bin/env python3
"""200 (or N) clients ask a running tallyfy-vault agent for a token at once,
over the protocol in docs/agent.md; prints how many were answered and the
median and p99 latency, as a Markdown table. Used by tools/bench agent.

Usage: tools/agent-load.py SOCKET VAULT_REALPATH [N]"""
import json, socket, statistics, struct, sys, threading, time

path, vault = sys.argv[1], sys.argv[2]
count = int(sys.argv[3]) if len(sys.argv) > 3 else 200
request = json.dumps({"version": 1, "op": "token", "vault": vault, "profile": "default",
                      "minimumLifetime": 60, "renewal": "whenStale"}).encode()
latencies, failures = [], []
start = threading.Barrier(count)
lock = threading.Lock()

def client():
    start.wait()
    began = time.perf_counter()
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(path)
        s.sendall(struct.pack(">I", len(request)) + request)
        header = b""
        while len(header) < 4:
            header += s.recv(4 - len(header))
        length = struct.unpack(">I", header)[0]
        body = b""
        while len(body) < length:
            body += s.recv(length - len(body))
        ok = json.loads(body).get("ok") is True
        with lock:
            (latencies if ok else failures).append(time.perf_counter() - began)
    except Exception as error:  # noqa: BLE001 - counted, not raised
        with lock:
            failures.append(str(type(error).__name__))

threads = [threading.Thread(target=client) for _ in range(count)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
latencies.sort()
p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else float("nan")
print(f"| {count} clients at once | answered | median | p99 | max |")
print("|---|---:|---:|---:|---:|")
print(f"| token requests to the agent | {len(latencies)}/{count} | {statistics.median(latencies) * 1000:.1f} ms "
      f"| {p99 * 1000:.1f} ms | {latencies[-1] * 1000:.1f} ms |" if latencies else f"| none answered | 0/{count} | | | |")
sys.exit(0 if not failures else 1)

#!/usr/bin/env python3
"""Load for `tools/bench proxy`: run as the child of `tallyfy-vault exec`
(plain, so it talks to the emulator with the token, or `--proxy`, so it talks
to the proxy with the capability) and print one JSON line of figures.

  proxy-load.py latency N        N sequential kept-alive GETs of .../me: p50, p99 (ms)
  proxy-load.py concurrent C N   C clients at once, N kept-alive GETs each: p50, p99, failures
  proxy-load.py stream PATH      GET PATH below the API URL, read it all: bytes, and the
                                 parent's (the proxy's) resident memory before and at most
  proxy-load.py serve-big MB     an upstream that answers every GET with MB MiB (prints its port)
"""
import http.client, json, os, socket, statistics, sys, threading, time, urllib.parse


def target():
    u = urllib.parse.urlsplit(os.environ["TALLYFY_API_URL"])
    return u.hostname, u.port or (443 if u.scheme == "https" else 80), u.path


def headers():
    return {"Authorization": "Bearer " + os.environ["TALLYFY_API_TOKEN"], "X-Tallyfy-Client": "APIClient",
            "Accept": "application/json"}


def timed_gets(count, times, failures):
    host, port, base = target()
    path = f"{base}/organizations/{os.environ['TALLYFY_ORG_ID']}/me"
    c = http.client.HTTPConnection(host, port, timeout=60)
    h = headers()
    for _ in range(count):
        start = time.perf_counter()
        c.request("GET", path, headers=h)
        r = c.getresponse()
        r.read()
        times.append((time.perf_counter() - start) * 1000)
        if r.status != 200:
            failures.append(r.status)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


mode = sys.argv[1]
if mode == "latency":
    times, failures = [], []
    timed_gets(50, [], [])  # warm-up: connections, caches
    timed_gets(int(sys.argv[2]), times, failures)
    print(json.dumps({"requests": len(times), "failures": len(failures), "p50_ms": round(statistics.median(times), 4),
                      "p99_ms": round(percentile(times, 99), 4)}))
elif mode == "concurrent":
    clients, each = int(sys.argv[2]), int(sys.argv[3])
    times, failures = [], []
    threads = [threading.Thread(target=timed_gets, args=(each, times, failures)) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"clients": clients, "requests": len(times), "failures": len(failures),
                      "p50_ms": round(statistics.median(times), 3), "p99_ms": round(percentile(times, 99), 3),
                      "seconds": round(time.perf_counter() - start, 2)}))
elif mode == "stream":
    host, port, base = target()
    parent = os.getppid()
    before = rss_kib(parent)
    peak = before
    c = http.client.HTTPConnection(host, port, timeout=120)
    c.request("GET", base + sys.argv[2], headers=headers())
    r = c.getresponse()
    total = 0
    while True:
        chunk = r.read(1 << 20)
        if not chunk:
            break
        total += len(chunk)
        peak = max(peak, rss_kib(parent))
    print(json.dumps({"status": r.status, "bytes": total, "rss_before_kib": before, "rss_peak_kib": peak,
                      "growth_mib": round((peak - before) / 1024, 1)}))
elif mode == "serve-big":
    size = int(sys.argv[2]) << 20
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    print(s.getsockname()[1], flush=True)
    block = b"x" * (1 << 20)

    def serve(c):
        with c:
            data = b""
            while b"\r\n\r\n" not in data:
                got = c.recv(65536)
                if not got:
                    return
                data += got
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // len(block)):
                c.sendall(block)

    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()

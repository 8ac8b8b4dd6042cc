#!/usr/bin/env python3
"""Latency of `exec --mask` (tools/bench mask): how long after the child
writes a line, or a prompt without a newline, the bytes reach our side.

  mask-latency.py child N GAP_MS     (run under exec --mask) writes N pieces, one every GAP_MS:
                                     "t=<monotonic ns>|" + filler + ("\\n" | "> " | "> ey")
  mask-latency.py measure CMD...     runs CMD (whose child is the above) on a pipe, prints JSON:
                                     p50/p99/max in ms for lines, prompts, and prompts that end
                                     in bytes that could start a token ("ey", held back until the
                                     masker's idle flush)

CLOCK_MONOTONIC is the same clock in both processes, so a piece's delay is
the reader's clock when the piece is complete minus the time written in it.
"""
import json, os, re, select, statistics, subprocess, sys, time

ENDINGS = {"line": "\n", "prompt": "> ", "prefix": "> ey"}


def child(count, gap_ms):
    kinds = list(ENDINGS)
    for n in range(count):
        kind = kinds[n % len(kinds)]
        piece = f"t={time.monotonic_ns()}|{kind}|" + "x" * 40 + ENDINGS[kind]
        os.write(1, piece.encode())
        time.sleep(gap_ms / 1000)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def measure(command):
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    fd = process.stdout.fileno()
    buffer = b""
    delays = {kind: [] for kind in ENDINGS}
    pattern = re.compile(rb"t=(\d+)\|(\w+)\|x{40}(\n|> ey|> )")
    while True:
        select.select([fd], [], [])
        chunk = os.read(fd, 65536)
        now = time.monotonic_ns()
        if not chunk:
            break
        buffer += chunk
        # A piece is complete when its ending arrived; a prompt's "> " may be
        # followed by "ey" later only for the prefix kind, named in the piece.
        while True:
            match = pattern.search(buffer)
            if not match:
                break
            kind = match.group(2).decode()
            ending = ENDINGS[kind].encode()
            end = match.start(3) + len(ending)
            if buffer[match.start(3):end] != ending:
                if len(buffer) < end:
                    break
            if len(buffer) < end:
                break
            delays[kind].append((now - int(match.group(1))) / 1e6)
            buffer = buffer[end:]
    process.wait()
    report = {"status": process.returncode}
    for kind, values in delays.items():
        if values:
            report[kind] = {"n": len(values), "p50_ms": round(percentile(values, 50), 2),
                            "p99_ms": round(percentile(values, 99), 2), "max_ms": round(max(values), 2)}
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(int(sys.argv[2]), float(sys.argv[3]))
    elif sys.argv[1] == "measure":
        measure(sys.argv[2:])
    else:
        sys.exit(__doc__)

#!/usr/bin/env python3
"""TCP forwarders for tools/partition-test, one process per network namespace.

Each argument is LISTEN_HOST:LISTEN_PORT=TARGET_HOST:TARGET_PORT[=LABEL]. The
vault speaks plain HTTP to loopback only, so a client machine reaches etcd and
the emulator through forwarders on its own 127.0.0.1 whose packets cross the
bridge (and the nemesis's cuts) to the other namespaces; a cut then looks as a
real one does: the connection opens locally and nothing answers.

With --log FILE, a forwarder with a LABEL also records every HTTP request line
that goes through it whose path ends in "/token" (the OAuth token endpoint and
user-token issuance) as a JSON line {"type":TYPE,"client":LABEL,"at":T,
"path":P}, TYPE "request" (or --type's): the emulator sees every request come
from the forwarder in front of it, so only there can a token request be put
down to the machine that made it; the forwarder on the machine itself records
when the request was sent ("send"), which is when the vault starts counting
the token's life. Request
lines are found at the start of each chunk a client writes or right after a
blank line, which is where HTTP/1.1 requests begin (no pipelining here).
"""
import asyncio
import json
import re
import sys
import time

REQUEST_LINE = re.compile(rb"(?:^|\r\n\r\n)(GET|POST|PUT|DELETE) (\S+) HTTP/1\.[01]\r\n")


class Forwarder:
    def __init__(self, target_host, target_port, label, log, kind):
        self.target = (target_host, target_port)
        self.label = label
        self.log = log
        self.kind = kind

    async def handle(self, reader, writer):
        # The client's first bytes are read (and recorded) while the far side
        # is still being reached: through a cut that takes as long as the cut
        # lasts, but the request was sent when the client wrote it.
        connecting = asyncio.ensure_future(asyncio.open_connection(*self.target))
        first = await reader.read(65536)
        if first and self.log is not None:
            self.record(first)
        # A client that gives up before the far side answers the connection
        # closes it; a real connection whose SYN never got through then
        # carries nothing, so its request must not arrive after the cut heals.
        while first and not connecting.done():
            reading = asyncio.ensure_future(reader.read(65536))
            await asyncio.wait({connecting, reading}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                reading.cancel()
                try:
                    # Gone before the pipes read from the same stream; bytes
                    # that arrived as it was cancelled are kept.
                    first += await reading
                except asyncio.CancelledError:
                    pass
                break
            more = reading.result()
            if not more:
                connecting.cancel()
                writer.close()
                return
            if self.log is not None:
                self.record(more)
            first += more
        try:
            upstream_reader, upstream_writer = await connecting
        except (OSError, asyncio.CancelledError):
            writer.close()
            return
        if first:
            upstream_writer.write(first)

        async def pipe(source, sink, watch):
            try:
                while True:
                    data = await source.read(65536)
                    if not data:
                        break
                    if watch and self.log is not None:
                        self.record(data)
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                try:
                    sink.close()
                except OSError:
                    pass

        await asyncio.gather(pipe(reader, upstream_writer, True), pipe(upstream_reader, writer, False))

    def record(self, data):
        for match in REQUEST_LINE.finditer(data):
            path = match.group(2).decode("ascii", "replace")
            if path.endswith("/token") and match.group(1) == b"POST":
                kind = "token" if path.startswith("/oauth/") else "user-token"
                self.log.write(json.dumps({"type": self.kind, "client": self.label, "at": time.time(), "path": kind}) + "\n")
                self.log.flush()


async def main(arguments):
    log = None
    kind = "request"
    while arguments[:1] in (["--log"], ["--type"]):
        if arguments[0] == "--log":
            log = open(arguments[1], "a", buffering=1)
        else:
            kind = arguments[1]
        arguments = arguments[2:]
    servers = []
    for spec in arguments:
        parts = spec.split("=")
        listen, target = parts[0], parts[1]
        label = parts[2] if len(parts) > 2 else None
        lhost, lport = listen.rsplit(":", 1)
        thost, tport = target.rsplit(":", 1)
        forwarder = Forwarder(thost, int(tport), label, log if label else None, kind)
        servers.append(await asyncio.start_server(forwarder.handle, lhost, int(lport), reuse_address=True))
    print("forwarding", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass

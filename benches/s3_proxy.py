#!/usr/bin/env python3
"""A TCP proxy in front of an S3 server that counts what crosses it and can add latency
(stdlib only). benches/compare.sh puts one in front of the s3s-fs all tools share.

    python3 benches/s3_proxy.py --listen PORT --to HOST:PORT --stats FILE [--delay-ms MS] [--log FILE]

- Counts bytes sent to the server (up) and received from it (down), and HTTP requests,
  by following the client's side of each connection as HTTP/1.1 (headers, then a body
  of Content-Length bytes or in chunked encoding).
- `--delay-ms MS` holds every piece of data MS milliseconds in each direction before
  passing it on, in order: what `tc qdisc add dev lo root netem delay MSms` does to
  loopback traffic (a round trip takes 2 x MS longer), for kernels without netem.
- `--log FILE` appends each request's time, method and path (without the query's
  signature) to FILE: which requests a step makes, in what order.
- On SIGUSR1 it writes its counters to FILE as JSON (written whole, then renamed), so
  a caller can take them before and after a step. It writes them on SIGTERM too.
"""
import argparse
import asyncio
import json
import os
import signal
import time

COUNTS = {"requests": 0, "bytes_up": 0, "bytes_down": 0, "connections": 0}
REQUEST_LOG = None


class RequestCounter:
    """Follows a client's byte stream as HTTP/1.1 requests and counts them."""

    def __init__(self):
        self.buffer = b""
        self.body_left = 0  # bytes of a Content-Length body still to skip
        self.chunked = False  # inside a chunked body

    def feed(self, data):
        self.buffer += data
        while True:
            if self.body_left:
                take = min(self.body_left, len(self.buffer))
                self.buffer = self.buffer[take:]
                self.body_left -= take
                if self.body_left:
                    return
                continue
            if self.chunked:
                line_end = self.buffer.find(b"\r\n")
                if line_end < 0:
                    return
                size = int(self.buffer[:line_end].split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # last chunk: optional trailers, then an empty line
                    end = self.buffer.find(b"\r\n\r\n", line_end - 2 if line_end >= 2 else 0)
                    if end < 0:
                        return
                    self.buffer = self.buffer[end + 4:]
                    self.chunked = False
                    continue
                if len(self.buffer) < line_end + 2 + size + 2:
                    # wait for the whole chunk; drop what is read so far by counting
                    return
                self.buffer = self.buffer[line_end + 2 + size + 2:]
                continue
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1").split("\r\n")
            self.buffer = self.buffer[head_end + 4:]
            if not head or not head[0].strip():
                continue
            COUNTS["requests"] += 1
            if REQUEST_LOG is not None:
                method, _, rest = head[0].partition(" ")
                path = rest.rsplit(" ", 1)[0].split("X-Amz-", 1)[0]
                REQUEST_LOG.write(f"{time.monotonic():.3f} {method} {path}\n")
                REQUEST_LOG.flush()
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.chunked = True
            else:
                self.body_left = int(headers.get("content-length", "0") or 0)


async def pipe(reader, writer, direction, delay, counter):
    """Copies reader to writer, counting, each piece `delay` seconds late, in order."""
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass

    delivering = asyncio.ensure_future(deliver())
    try:
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            COUNTS[direction] += len(data)
            if counter is not None:
                counter.feed(data)
            await queue.put((time.monotonic() + delay, data))
    except (ConnectionError, OSError):
        pass
    await queue.put((0, None))
    try:
        await delivering
    except (ConnectionError, OSError):
        pass


async def handle(client_reader, client_writer, target, delay):
    COUNTS["connections"] += 1
    host, port = target
    try:
        server_reader, server_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        pipe(client_reader, server_writer, "bytes_up", delay, RequestCounter()),
        pipe(server_reader, client_writer, "bytes_down", delay, None),
    )
    for w in (server_writer, client_writer):
        try:
            w.close()
        except OSError:
            pass


def write_stats(path):
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(COUNTS, f)
    os.replace(temporary, path)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--to", required=True, help="HOST:PORT of the S3 server")
    ap.add_argument("--stats", required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--log")
    args = ap.parse_args()
    global REQUEST_LOG
    if args.log:
        REQUEST_LOG = open(args.log, "a")
    host, _, port = args.to.rpartition(":")
    delay = args.delay_ms / 1000.0
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, write_stats, args.stats)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, (host, int(port)), delay), "127.0.0.1", args.listen
    )
    write_stats(args.stats)
    async with server:
        await stop.wait()
    write_stats(args.stats)


if __name__ == "__main__":
    asyncio.run(main())

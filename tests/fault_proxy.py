#!/usr/bin/env python3
"""A fault-injecting HTTP proxy for the S3 tests (stdlib only).

It sits between coffer and an S3 server (s3s-fs) and forwards every request
unchanged (the Host header too, so SigV4 signatures stay valid), except where a
rule says otherwise:

  status    answer with this status (500, 503, 429...) without forwarding,
            optionally with Retry-After and an S3 error code (SlowDown)
  reset     close the connection with a TCP reset before forwarding
  truncate  forward, then send the headers and only the first `keep` body bytes
  drop      forward (the server acts), then reset instead of answering
  delay     wait `ms` milliseconds before forwarding
  outage    reset, and refuse all connections for `seconds` (without: until
            resume): an outage that begins at an exact request, however fast
            the client goes

Rules match on method, a substring of the path and a substring of the query; they
let the first `skip` matching requests pass, then act on `count` of them (-1: all).
`outage` refuses connections for a number of seconds (the listening socket is
closed, open connections are reset); `kill` does the same until `resume`.

Control (JSON over HTTP on the control port):
  POST /rules   [{"action": "status", "status": 503, "method": "PUT", ...}]
  POST /outage  {"seconds": 10}        POST /kill   POST /resume
  GET  /log     requests seen: [[method, path, query, status, action,
                x-amz-content-sha256 (forwarded requests)], ...]
  POST /clear   no rules, empty log

  python3 tests/fault_proxy.py --upstream 127.0.0.1:9000   # prints PORT CONTROL_PORT
"""

import argparse
import http.server
import json
import os
import socket
import struct
import sys
import threading
import time

LOCK = threading.Lock()
RULES = []
LOG = []
CLIENTS = set()
STATE = {"listening": None, "down_until": 0.0, "killed": False}


def reset(sock):
    """Closes a socket with a TCP reset instead of a clean FIN, at once, even while
    another thread reads from it through a file object (which keeps a plain close
    from closing the descriptor)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        os.close(sock.detach())
    except OSError:
        pass


def read_head(stream):
    """Reads a request or status line and headers; None at a clean end."""
    lines = []
    while True:
        line = stream.readline(65536)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            if lines:
                return lines
            continue
        lines.append(line)


def header(lines, name):
    for line in lines[1:]:
        key, _, value = line.decode("latin-1").partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def read_body(stream, lines, request, method=None, status=None):
    """Reads a message body by Content-Length, chunks, or (responses) to the end."""
    if status is not None and (method == "HEAD" or status in (204, 304) or 100 <= status < 200):
        return b"", False
    length = header(lines, "content-length")
    if length is not None:
        return stream.read(int(length)), False
    if (header(lines, "transfer-encoding") or "").lower() == "chunked":
        body = b""
        while True:
            size = int(stream.readline().split(b";")[0], 16)
            if size == 0:
                while stream.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return body, True
            body += stream.read(size)
            stream.readline()
    if request:
        return b"", False
    return stream.read(), False


def take_rule(method, path, query):
    with LOCK:
        for rule in RULES:
            if rule.get("method") and rule["method"] != method:
                continue
            if rule.get("path", "") not in path or rule.get("query", "") not in query:
                continue
            if rule.get("skip", 0) > 0:
                rule["skip"] -= 1
                continue
            count = rule.get("count", -1)
            if count == 0:
                continue
            if count > 0:
                rule["count"] = count - 1
            return dict(rule)
    return None


def forward(upstream, head, body):
    """Sends one request upstream on a fresh connection; returns the raw response."""
    with socket.create_connection(upstream, timeout=300) as server:
        lines = [line for line in head if not line.lower().startswith((b"connection:", b"transfer-encoding:"))]
        if body and header(head, "content-length") is None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"Connection: close\r\n")
        server.sendall(b"".join(lines) + b"\r\n" + body)
        stream = server.makefile("rb")
        response = read_head(stream)
        if response is None:
            raise ConnectionError("upstream closed without answering")
        status = int(response[0].split()[1])
        method = head[0].split()[0].decode()
        payload, _ = read_body(stream, response, False, method, status)
        return response, status, payload


def response_bytes(response, payload, method):
    """The status line and headers, with the length of the body as sent (a HEAD
    answer keeps the object's length: it has no body)."""
    dropped = (b"transfer-encoding:", b"connection:") if method == "HEAD" else (
        b"transfer-encoding:", b"content-length:", b"connection:")
    lines = [line for line in response[1:] if not line.lower().startswith(dropped)]
    if method != "HEAD":
        lines.append(b"Content-Length: %d\r\n" % len(payload))
    return response[0] + b"".join(lines) + b"\r\n"


def error_response(rule):
    status = rule.get("status", 503)
    code = rule.get("code", "SlowDown" if status == 503 else "InternalError")
    body = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code>'
            "<Message>injected by fault_proxy</Message></Error>" % code).encode()
    extra = ""
    if "retry_after" in rule:
        extra = "Retry-After: %s\r\n" % rule["retry_after"]
    head = ("HTTP/1.1 %d Injected\r\nContent-Type: application/xml\r\n%sContent-Length: %d\r\n\r\n"
            % (status, extra, len(body))).encode()
    return head + body


def serve_client(client, upstream):
    with LOCK:
        CLIENTS.add(client)
    stream = client.makefile("rb")
    try:
        while True:
            head = read_head(stream)
            if head is None:
                break
            body, _ = read_body(stream, head, True)
            method, target = head[0].split()[0].decode(), head[0].split()[1].decode()
            path, _, query = target.partition("?")
            with LOCK:
                down = STATE["killed"] or time.time() < STATE["down_until"]
            if down:
                log(method, path, query, None, "refused")
                reset(client)
                return
            rule = take_rule(method, path, query)
            action = rule["action"] if rule else "forward"
            status = None
            if action == "outage":
                with LOCK:
                    if "seconds" in rule:
                        STATE["down_until"] = time.time() + float(rule["seconds"])
                    else:
                        STATE["killed"] = True
                log(method, path, query, None, action)
                reset(client)
                return
            if action == "reset":
                log(method, path, query, None, action)
                reset(client)
                return
            if action == "status":
                client.sendall(error_response(rule))
                log(method, path, query, rule.get("status", 503), action)
                continue
            if action == "delay":
                time.sleep(rule.get("ms", 1000) / 1000)
            try:
                response, status, payload = forward(upstream, head, body)
            except OSError:
                log(method, path, query, None, "upstream-failed")
                reset(client)
                return
            log(method, path, query, status, action, header(head, "x-amz-content-sha256"))
            if action == "drop":
                reset(client)
                return
            if action == "truncate":
                client.sendall(response_bytes(response, payload, method) + payload[: rule.get("keep", 0)])
                reset(client)
                return
            client.sendall(response_bytes(response, payload, method) + payload)
    except OSError:
        pass
    finally:
        with LOCK:
            CLIENTS.discard(client)
        try:
            client.close()
        except OSError:
            pass


def log(method, path, query, status, action, payload_hash=None):
    with LOCK:
        LOG.append([method, path, query, status, action, payload_hash])


def listen(port):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(128)
    return server


def accept_loop(port, upstream):
    while True:
        with LOCK:
            down = STATE["killed"] or time.time() < STATE["down_until"]
            server = STATE["listening"]
        if down:
            if server is not None:
                server.close()
                with LOCK:
                    STATE["listening"] = None
                    clients = list(CLIENTS)
                for client in clients:
                    reset(client)
            time.sleep(0.05)
            continue
        if server is None:
            server = listen(port)
            server.settimeout(0.1)
            with LOCK:
                STATE["listening"] = server
        try:
            client, _ = server.accept()
        except socket.timeout:
            continue
        except OSError:
            continue
        client.settimeout(300)
        threading.Thread(target=serve_client, args=(client, upstream), daemon=True).start()


class Control(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, value):
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            self.reply(list(LOG) if self.path == "/log" else {"rules": RULES})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        data = json.loads(self.rfile.read(length) or b"null")
        with LOCK:
            if self.path == "/rules":
                RULES[:] = data or []
            elif self.path == "/outage":
                STATE["down_until"] = time.time() + float(data["seconds"])
            elif self.path == "/kill":
                STATE["killed"] = True
            elif self.path == "/resume":
                STATE["killed"] = False
                STATE["down_until"] = 0.0
            elif self.path == "/clear":
                RULES[:] = []
                LOG[:] = []
        self.reply({"ok": True})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the S3 server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    upstream = (host, int(port))
    first = listen(args.port)
    port = first.getsockname()[1]
    first.settimeout(0.1)
    STATE["listening"] = first
    control = http.server.ThreadingHTTPServer(("127.0.0.1", args.control_port), Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    print(port, control.server_address[1], flush=True)
    accept_loop(port, upstream)


if __name__ == "__main__":
    sys.exit(main())

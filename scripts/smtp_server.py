#!/usr/bin/env python3
"""A real SMTP server on loopback for the notification tests (aiosmtpd).

    smtp_server.py DIR [--refuse-login] [--implicit-tls]

Makes a private CA and a server certificate for 127.0.0.1 and localhost in DIR
(ca.pem is what the client trusts), listens on a free port with STARTTLS required
(or TLS from the first byte with --implicit-tls) and AUTH LOGIN/PLAIN for user
"coffer" with the password in DIR/password, writes each message it accepts to
DIR/mail/N.eml, prints "PORT" on stdout once it listens, and runs until killed.
With --refuse-login every login is refused (535).
"""

import asyncio
import os
import ssl
import subprocess
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USER = "coffer"


def make_certificates(folder):
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key, ca_pem = os.path.join(folder, "ca.key"), os.path.join(folder, "ca.pem")
    key, csr, pem = (os.path.join(folder, name) for name in ("server.key", "server.csr", "server.pem"))
    extensions = os.path.join(folder, "server.ext")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_pem,
            "-days", "2", "-subj", "/CN=coffer test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    with open(extensions, "w") as out:
        out.write("basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
                  "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
            "-out", pem, "-days", "2", "-extfile", extensions)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem, key)
    return context


class Saver:
    def __init__(self, folder):
        self.folder = folder
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(self.folder, f"{self.count}.eml")
        with open(path + ".part", "wb") as out:
            out.write(envelope.original_content or envelope.content)
        os.rename(path + ".part", path)
        return "250 OK"


def authenticator(password, refuse):
    def check(server, session, envelope, mechanism, auth_data):
        if refuse or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = auth_data.login.decode() == USER and auth_data.password.decode() == password
        return AuthResult(success=ok, handled=False)
    return check


def free_port():
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    folder = sys.argv[1]
    refuse = "--refuse-login" in sys.argv
    implicit = "--implicit-tls" in sys.argv
    os.makedirs(os.path.join(folder, "mail"), exist_ok=True)
    password_file = os.path.join(folder, "password")
    if not os.path.exists(password_file):
        with open(password_file, "w") as out:
            out.write("s3cret-smtp\n")
    password = open(password_file).read().strip()
    context = make_certificates(folder)
    port = free_port()
    options = dict(authenticator=authenticator(password, refuse), auth_require_tls=True)
    if implicit:
        controller = Controller(Saver(os.path.join(folder, "mail")), hostname="127.0.0.1", port=port,
                                ssl_context=context, server_kwargs=options)
    else:
        controller = Controller(Saver(os.path.join(folder, "mail")), hostname="127.0.0.1", port=port,
                                tls_context=context, require_starttls=True, server_kwargs=options)
    controller.start()
    print(port, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

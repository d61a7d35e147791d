"""Small programs the demo and the end-to-end tests run inside lab hosts (``python -c``).

:data:`SINK` listens on ``[argv[1]]:argv[2]`` (IPv4 or IPv6), prints ``listening``, accepts one
connection and prints the SHA-256 of everything it received. :data:`SOURCE` connects to
``argv[1]:argv[2]``, sends 1 MiB of random bytes and prints their SHA-256 and the seconds the
transfer took. Equal digests prove the bytes crossed the tunnel intact.
"""

from __future__ import annotations

SINK = """
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
h = hashlib.sha256()
while data := c.recv(65536):
    h.update(data)
print(h.hexdigest(), flush=True)
"""

SOURCE = """
import hashlib, os, socket, sys, time
data = os.urandom(1 << 20)
start = time.monotonic()
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(hashlib.sha256(data).hexdigest(), time.monotonic() - start)
"""

"""Helpers shared by every test: free local TCP ports."""

from __future__ import annotations

import random
import socket


def free_port(count: int = 1) -> int:
    """A local TCP port nobody listens on; with ``count``, the first of that many consecutive free ports.

    The port is closed again before it is returned, so a test can also use it as an address that refuses connections.
    """
    if count == 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    for _ in range(50):
        base = random.randrange(20_000, 60_000 - count)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")

"""The UDP endpoint: replies from the targeted address, and v6udpv4 data off the event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from tunnelbroker.listeners.udp_endpoint import PktinfoEndpoint


class Receiver:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int], str | None, str]] = []

    def datagram_received_on(self, data: bytes, addr: tuple[str, int], local: str | None) -> None:
        self.got.append((data, addr, local, threading.current_thread().name))


async def test_data_goes_to_the_sink_from_its_own_thread_even_while_the_loop_is_busy() -> None:
    sink: list[tuple[bytes, str, float]] = []
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    receiver = Receiver()
    endpoint = PktinfoEndpoint(
        server,
        receiver,
        data_sink=lambda d, a: sink.append((d, threading.current_thread().name, time.monotonic())),
    )
    port = server.getsockname()[1]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"\xf0signalling", ("127.0.0.1", port))
            client.sendto(b"\x60" + b"\0" * 39, ("127.0.0.1", port))
            # Block the event loop for a second: the data must still get through meanwhile.
            blocked_at = time.monotonic()
            time.sleep(1.0)
            assert sink and sink[0][2] - blocked_at < 0.5
            assert sink[0][1] != threading.current_thread().name
            assert receiver.got == []  # signalling waits for the loop...
            for _ in range(100):
                await asyncio.sleep(0.01)
                if receiver.got:
                    break
            data, addr, local, thread = receiver.got[0]
            assert data == b"\xf0signalling" and local == "127.0.0.1"
            assert addr[1] == client.getsockname()[1] and thread == threading.current_thread().name
            # ... and replies still leave from the address the client targeted.
            endpoint.sendto(b"reply", addr, local)
            client.settimeout(2)
            assert client.recvfrom(100) == (b"reply", ("127.0.0.1", port))
    finally:
        endpoint.close()
    assert endpoint.is_closing() and not any(
        t.name.startswith("udp-") for t in threading.enumerate()
    )

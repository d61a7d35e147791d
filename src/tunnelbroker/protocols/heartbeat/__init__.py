"""The SixXS heartbeat for 6in4-heartbeat tunnels (UDP 3740), sans-IO. See docs/sixxs.md.

A PoP :func:`parse`\\ s a datagram, finds the tunnel by :attr:`Heartbeat.address`, then
:func:`verify`\\ s it with the tunnel's secret and replay window and, on success, learns the
endpoint (``listeners/heartbeat.py``). A client :func:`build`\\ s.
"""

from tunnelbroker.protocols.heartbeat.codec import (
    MAX_SIZE,
    PORT,
    PREFIX,
    SENDER,
    Heartbeat,
    build,
    compute_digest,
    parse,
    receive,
    verify,
)
from tunnelbroker.protocols.heartbeat.errors import HeartbeatDrop

__all__ = [
    "MAX_SIZE",
    "PORT",
    "PREFIX",
    "SENDER",
    "Heartbeat",
    "HeartbeatDrop",
    "build",
    "compute_digest",
    "parse",
    "receive",
    "verify",
]

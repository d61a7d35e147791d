"""Client side of the tunnel broker protocols: negotiate a tunnel with a broker.

Only signalling lives here for now; bringing the tunnel up on the host is a separate step.
"""

from tunnelbroker.client.tsp import (
    MAX_REDIRECTS,
    Negotiated,
    TcpFlow,
    TspClientError,
    UdpFlow,
    negotiate,
)

__all__ = ["MAX_REDIRECTS", "Negotiated", "TcpFlow", "TspClientError", "UdpFlow", "negotiate"]

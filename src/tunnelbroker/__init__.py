"""tunnelbroker: an IPv6 tunnel broker (RFC 3053): TSP, SixXS protocols, a tunnel server."""

__version__ = "0.1.0"

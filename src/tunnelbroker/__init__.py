"""tunnelbroker: an IPv6 tunnel broker (RFC 3053) with TSP, SixXS-compatible protocols and a tunnel server."""

__version__ = "0.1.0"

"""TSP, the Tunnel Setup Protocol (RFC 5572), as sans-IO codecs and state machines."""

"""DNS for tunnels: the client's name (AAAA and PTR) and reverse delegation of routed prefixes,
published to the operator's primary server with RFC 2136 dynamic updates."""

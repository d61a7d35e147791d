"""The tunnel server: the data plane that carries the tunnels' packets."""

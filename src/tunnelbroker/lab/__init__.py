"""A network-namespace lab: hosts, links and a NAT on one machine, for tests and the demo."""

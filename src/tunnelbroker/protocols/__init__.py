"""Sans-IO protocol implementations.

Nothing in this package opens sockets, reads clocks, draws randomness or touches the store:
time, nonces and secrets are passed in by the caller (see tests/test_layout.py).
"""

"""Broker core: pure, sans-IO bookkeeping (address allocation, limits)."""

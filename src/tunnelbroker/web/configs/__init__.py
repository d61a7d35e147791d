"""Ready-to-run configuration for a tunnel, per platform: the portal's and the API's downloads.

Pure functions, no I/O: :func:`render` turns a checked :class:`TunnelConfigInput` into the
file for one of :data:`PLATFORMS`. Every value that reaches a command is an address, a
prefix, a number or an identifier matched against a strict pattern, so nothing a user typed
can run as a command; the tunnel's description appears only in comments.
"""

from tunnelbroker.web.configs.inputs import ConfigError, TunnelConfigInput, TunnelKind
from tunnelbroker.web.configs.platforms import PLATFORMS, Platform, Rendered, platforms_for, render

__all__ = [
    "PLATFORMS",
    "ConfigError",
    "Platform",
    "Rendered",
    "TunnelConfigInput",
    "TunnelKind",
    "platforms_for",
    "render",
]

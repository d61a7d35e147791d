"""Ready-to-run configuration for a tunnel, per platform (the portal's downloads, the API).

:func:`render` turns a :class:`TunnelParams` into a script or configuration file for one of
:data:`PLATFORMS`. Every value that reaches a script is an address, a prefix, a number or a
checked identifier, so nothing a user typed can inject a command (names appear only in
comments, reduced to safe characters).
"""

from tunnelbroker.configs.params import ConfigError, TunnelParams
from tunnelbroker.configs.render import PLATFORMS, Platform, Rendered, platforms_for, render

__all__ = [
    "PLATFORMS",
    "ConfigError",
    "Platform",
    "Rendered",
    "TunnelParams",
    "platforms_for",
    "render",
]

"""Builds the tunnel server's C fast path; everything else is in pyproject.toml.

The extension is optional: where it cannot be built (no compiler, no Python headers, no
OpenSSL headers for AYIYA's SHA-1) the install still succeeds and the userspace data plane
forwards in pure Python, more slowly (it logs a warning saying so).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tunnelbroker.tunnelserver._fastpath",
            sources=[
                "src/tunnelbroker/tunnelserver/_fastpath.c",
                "src/tunnelbroker/tunnelserver/sha1x16.c",
            ],
            depends=["src/tunnelbroker/tunnelserver/sha1x16.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            # SHA-1 for AYIYA (libssl-dev).
            libraries=["crypto"],
            optional=True,
        )
    ]
)

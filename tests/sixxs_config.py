"""A daemon configuration with only the SixXS listeners, on loopback and free ports."""

from __future__ import annotations

from pathlib import Path

from tunnelbroker.config import Config, load_config


def sixxs_only(tmp_path: Path) -> Config:
    """TIC and heartbeat on 127.0.0.1 (ports picked for 0); no TSP, web or data plane."""
    return load_config(
        None,
        {
            "data_dir": str(tmp_path),
            "tsp": {"enabled": False},
            "tunnelserver": {"backend": "none"},
            "web": {"enabled": False},
            "sixxs": {"listen": ["127.0.0.1"], "heartbeat_port": 0, "tic_port": 0},
        },
    )

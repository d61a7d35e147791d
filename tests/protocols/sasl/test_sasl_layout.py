"""The SASL package stays sans-IO: no sockets, clocks, randomness or store imports."""

from __future__ import annotations

import ast
from pathlib import Path

import tunnelbroker.protocols.sasl as sasl

BANNED = {"socket", "asyncio", "time", "os", "random", "secrets", "selectors", "threading"}
BANNED_PREFIXES = ("tunnelbroker.store", "tunnelbroker.broker")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_io_imports() -> None:
    files = sorted(Path(sasl.__file__).parent.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for name in imported_modules(path):
            assert name.split(".")[0] not in BANNED, f"{path.name} imports {name}"
            assert not name.startswith(BANNED_PREFIXES), f"{path.name} imports {name}"


def test_public_names() -> None:
    for name in sasl.__all__:
        assert hasattr(sasl, name)

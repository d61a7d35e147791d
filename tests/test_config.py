"""The configuration model, its reference document and the example file agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from tunnelbroker.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _keys(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_key_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    sections: dict[str, set[str]] = {}
    current = ""
    for line in doc.splitlines():
        m = re.match(r"## `\[(\w+)\]`", line)
        if m:
            current = m.group(1)
        elif line.startswith("## "):
            current = ""
        m = re.match(r"\| `(\w+)` \|", line)
        if m:
            sections.setdefault(current, set()).add(m.group(1))
    for key in _keys(Config):
        section, _, name = key.rpartition(".")
        assert name in sections.get(section, set()), f"{key} is not in docs/configuration.md"


def test_example_file_loads_and_has_every_key() -> None:
    path = ROOT / "docs" / "tunnelbroker.example.toml"
    config = load_config(path)
    assert config == Config.model_validate(tomllib.loads(path.read_text()))
    data = tomllib.loads(path.read_text())
    for key in _keys(Config):
        node: object = data
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key} missing from the example"
            node = node[part]


def test_defaults_need_no_file() -> None:
    c = load_config(None)
    assert c.tsp.port == 3653 and c.database_url.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[tsp]\nport = 70000\n", "tsp.port"),
        ("[pools]\nlink_prefix = 'nonsense'\n", "pools.link_prefix"),
        ("[pools]\nmin_prefix_length = 60\ndefault_prefix_length = 56\n", "pools"),
        ("[brokr]\nrealm = 'x'\n", "brokr"),
        ("[broker]\ndns_servers = []\n", "broker.dns_servers"),
        ("not toml [", "line"),
        ("[sixxs]\ntls_key = '/etc/key.pem'\n", "tls_certificate"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, where: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert where in str(e.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")

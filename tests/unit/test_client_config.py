"""common/config.py: the client section of the `master` command's client commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.config import ConfigError, load_settings, settings_from_dict


def error_key(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data)
    return str(info.value.details["key"])


def test_defaults() -> None:
    client = settings_from_dict({}).client
    assert client.url == "http://127.0.0.1:8080"
    assert (client.user, client.password, client.token, client.ca_file) == (None,) * 4


def test_read_and_ca_file_resolved(tmp_path: Path) -> None:
    client = settings_from_dict({"client": {"url": "https://farm:8443", "user": "ci",
                                            "password": "pw", "ca_file": "ca.pem"}},
                                base=tmp_path).client
    assert (client.url, client.user, client.password) == ("https://farm:8443", "ci", "pw")
    assert client.ca_file == str(tmp_path / "ca.pem")


@pytest.mark.parametrize("client, key", [
    ({"url": "farm:8080"}, "client.url"),
    ({"user": "ci"}, "client.password"),
    ({"password": "pw"}, "client.user"),
    ({"token": " "}, "client.token"),
    ({"colour": "blue"}, "client.colour"),
])
def test_bad_values_name_the_key(client: dict, key: str) -> None:
    assert error_key({"client": client}) == key


def test_environment_overrides(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"client": {"url": "http://a:1", "user": "x",
                                                 "password": "y"}}))
    settings = load_settings(config, env={"PKGFARM_CLIENT_URL": "http://b:2",
                                          "PKGFARM_CLIENT_USER": "ci",
                                          "PKGFARM_CLIENT_PASSWORD": "secret",
                                          "PKGFARM_CLIENT_TOKEN": "tok"})
    client = settings.client
    assert (client.url, client.user, client.password, client.token) == (
        "http://b:2", "ci", "secret", "tok")

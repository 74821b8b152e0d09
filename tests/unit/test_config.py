"""common/config.py: validation of the settings mapping, the config file and the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from common.arch import host_arch
from common.config import ConfigError, Settings, load_settings, settings_from_dict

HASH = "pbkdf2:sha256:1000$salt$0123abcd"


def config_error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data)
    return info.value


def write_config(path: Path, data: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# -- defaults --------------------------------------------------------------------------------


def test_empty_mapping_gives_every_default(tmp_path: Path) -> None:
    s = settings_from_dict({}, base=tmp_path)
    assert isinstance(s, Settings)
    assert s.broker_url is None
    assert s.package_paths == ()
    assert s.master.bind == "127.0.0.1:8080"
    assert s.master.data_dir == "/var/lib/pkgfarm"
    assert s.master.users == {}
    assert s.master.processes == 4
    assert s.master.max_upload_bytes == 4 * 1024**3
    assert s.repository.suite == "stable"
    assert s.repository.component == "main"
    assert s.repository.architectures == ("amd64",)
    assert s.repository.origin == "pkgfarm"
    assert s.repository.label == "pkgfarm"
    assert s.worker.master_url == "http://127.0.0.1:8080"
    assert s.worker.username == "worker"
    assert s.worker.password is None
    assert s.worker.architectures == (host_arch(),)
    assert s.worker.concurrency == 1
    assert s.worker.work_dir == "/var/tmp/pkgfarm"
    assert s.worker.name is None
    assert s.worker.build_timeout == 3 * 3600
    assert s.worker.install_build_depends is True
    assert s.worker.heartbeat_interval == 15


def test_load_settings_without_a_file_gives_defaults() -> None:
    s = load_settings(None, env={})
    assert s.master.bind == "127.0.0.1:8080"
    assert s.broker_url is None


def test_values_are_converted_to_their_types(tmp_path: Path) -> None:
    s = settings_from_dict({
        "master": {"processes": "8", "users": {"alice": {"password_hash": HASH,
                                                          "roles": "upload"}}},
        "repository": {"architectures": "arm64", "suite": "trixie"},
        "worker": {"install_build_depends": "no", "concurrency": 3, "name": "w1"},
    }, base=tmp_path)
    assert s.master.processes == 8
    assert s.master.users["alice"].roles == ("upload",)
    assert s.master.users["alice"].password_hash == HASH
    assert s.repository.architectures == ("arm64",)
    assert s.repository.suite == "trixie"
    assert s.worker.install_build_depends is False
    assert s.worker.concurrency == 3
    assert s.worker.display_name == "w1"


def test_user_roles_default_to_read() -> None:
    s = settings_from_dict({"master": {"users": {"bob": {"password_hash": HASH}}}})
    assert s.master.users["bob"].roles == ("read",)


# -- unknown keys ----------------------------------------------------------------------------


def test_unknown_top_level_key_is_named() -> None:
    exc = config_error({"colour": "red"})
    assert exc.details["key"] == "colour"
    assert exc.message.startswith("colour: unknown key")
    assert "broker_url" in exc.message  # the known keys are listed


def test_unknown_nested_key_names_the_full_key() -> None:
    exc = config_error({"repository": {"colour": "red"}})
    assert exc.details["key"] == "repository.colour"
    assert exc.message.startswith("repository.colour: unknown key")


def test_unknown_key_of_a_user_names_the_full_key() -> None:
    exc = config_error({"master": {"users": {"admin": {"password_hash": HASH,
                                                        "rolez": ["admin"]}}}})
    assert exc.details["key"] == "master.users.admin.rolez"
    assert "master.users.admin.rolez: unknown key" in exc.message


# -- wrong types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"master": {"processes": "x"}}, "master.processes", "must be an integer"),
        ({"master": {"processes": 2.5}}, "master.processes", "must be an integer"),
        ({"worker": {"concurrency": True}}, "worker.concurrency", "must be an integer"),
        ({"repository": {"architectures": 5}}, "repository.architectures", "must be a list"),
        ({"package_paths": 7}, "package_paths", "must be a list"),
        ({"repository": {"architectures": [1]}}, "repository.architectures[0]",
         "must be a string"),
        ({"worker": {"install_build_depends": "maybe"}}, "worker.install_build_depends",
         "must be true or false"),
        ({"worker": {"install_build_depends": 2}}, "worker.install_build_depends",
         "must be true or false"),
        ({"master": {"bind": 8080}}, "master.bind", "must be a string"),
        ({"master": "x"}, "master", "must be a mapping"),
        ({"master": {"users": ["admin"]}}, "master.users", "must be a mapping"),
        ({"master": {"users": {"admin": "secret"}}}, "master.users.admin", "must be a mapping"),
        ({"broker_url": ["redis://x"]}, "broker_url", "must be a string"),
    ],
)
def test_wrong_types_name_the_key(data: dict[str, Any], key: str, fragment: str) -> None:
    exc = config_error(data)
    assert exc.details["key"] == key
    assert exc.message.startswith(f"{key}: ")
    assert fragment in exc.message


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"master": {"processes": 0}}, "master.processes", "at least 1"),
        ({"master": {"bind": "localhost"}}, "master.bind", "HOST:PORT"),
        ({"master": {"max_upload_bytes": 0}}, "master.max_upload_bytes", "positive"),
        ({"worker": {"master_url": "ftp://host"}}, "worker.master_url", "http"),
        ({"worker": {"build_timeout": 0}}, "worker.build_timeout", "positive"),
        ({"repository": {"suite": "../etc"}}, "repository.suite", "plain name"),
        ({"repository": {"architectures": []}}, "repository.architectures", "at least one"),
    ],
)
def test_bad_values_name_the_key(data: dict[str, Any], key: str, fragment: str) -> None:
    exc = config_error(data)
    assert exc.details["key"] == key
    assert exc.message.startswith(f"{key}: ")
    assert fragment in exc.message


def test_missing_password_hash_is_named() -> None:
    exc = config_error({"master": {"users": {"alice": {"roles": ["read"]}}}})
    assert exc.details["key"] == "master.users.alice.password_hash"
    assert exc.message == ("master.users.alice.password_hash: give exactly one of "
                           "password_hash and password_env")


def test_password_env_names_a_variable() -> None:
    settings = settings_from_dict({"master": {"users": {"bob": {
        "password_env": "PKGFARM_BOB_PASSWORD", "roles": ["read"]}}}})
    assert settings.master.users["bob"].password_env == "PKGFARM_BOB_PASSWORD"
    exc = config_error({"master": {"users": {"bob": {"password_env": "not a name"}}}})
    assert exc.details["key"] == "master.users.bob.password_env"
    exc = config_error({"master": {"users": {"bob": {"password_env": "X",
                                                     "password_hash": HASH}}}})
    assert "exactly one" in exc.message


def test_tls_cert_and_key_go_together() -> None:
    exc = config_error({"master": {"tls_cert": "/etc/pkgfarm/cert.pem"}})
    assert exc.details["key"] == "master.tls_cert"


def test_password_hash_must_be_a_werkzeug_hash() -> None:
    exc = config_error({"master": {"users": {"alice": {"password_hash": "plaintext"}}}})
    assert exc.details["key"] == "master.users.alice.password_hash"


def test_unknown_role_is_named() -> None:
    exc = config_error({"master": {"users": {"admin": {"password_hash": HASH,
                                                        "roles": ["admin", "root"]}}}})
    assert exc.details["key"] == "master.users.admin.roles"
    assert exc.message.startswith("master.users.admin.roles: unknown role 'root'")


def test_unknown_repository_architecture_is_named() -> None:
    exc = config_error({"repository": {"architectures": ["amd64", "amd46"]}})
    assert exc.details["key"] == "repository.architectures"
    assert "'amd46'" in exc.message


def test_repository_formats_default_to_deb_and_keep_their_order() -> None:
    assert settings_from_dict({}).repository.formats == ("deb",)
    chosen = settings_from_dict({"repository": {"formats": ["pacman", "deb", "rpm"]}})
    assert chosen.repository.formats == ("pacman", "deb", "rpm")
    assert settings_from_dict({"repository": {"formats": "rpm"}}).repository.formats == (
        "rpm",)  # one format may be given without a list, as package_paths


@pytest.mark.parametrize(("formats", "key", "message"), [
    ([], "repository.formats", "repository.formats: must list at least one package format"),
    (["deb", "rpm", "deb"], "repository.formats", "repository.formats: lists a format twice"),
    (["deb", "snap"], "repository.formats",
     "repository.formats: unknown package format 'snap' (known: deb, pacman, rpm)"),
    (["RPM"], "repository.formats",
     "repository.formats: unknown package format 'RPM' (known: deb, pacman, rpm)"),
    (["deb", 3], "repository.formats[1]", "repository.formats[1]: must be a string"),
    ({"deb": True}, "repository.formats", "repository.formats: must be a list"),
])
def test_bad_repository_formats_are_refused_naming_the_key(formats: Any, key: str,
                                                            message: str) -> None:
    exc = config_error({"repository": {"formats": formats}})
    assert exc.details["key"] == key
    assert exc.message.startswith(message), exc.message


def test_unknown_worker_architecture_is_named() -> None:
    exc = config_error({"worker": {"architectures": ["x86"]}})
    assert exc.details["key"] == "worker.architectures"
    assert "'x86'" in exc.message


# -- the file and the environment -----------------------------------------------------------


def test_environment_beats_the_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", {
        "broker_url": "redis://file-host:6379/0",
        "worker": {"password": "file-secret", "master_url": "http://file-host:8080",
                   "username": "from-file"},
    })
    env = {
        "PKGFARM_WORKER_PASSWORD": "env-secret",
        "PKGFARM_BROKER_URL": "redis://env-host:6379/1",
        "PKGFARM_MASTER_URL": "https://env-host",
    }
    s = load_settings(cfg, env=env)
    assert s.worker.password == "env-secret"
    assert s.broker_url == "redis://env-host:6379/1"
    assert s.effective_broker_url == "redis://env-host:6379/1"
    assert s.worker.master_url == "https://env-host"
    assert s.worker.username == "from-file"  # not overridden


def test_file_values_stay_without_environment(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", {
        "broker_url": "redis://file-host:6379/0", "worker": {"password": "file-secret"}})
    s = load_settings(cfg, env={"PKGFARM_WORKER_PASSWORD": ""})  # empty means unset
    assert s.worker.password == "file-secret"
    assert s.broker_url == "redis://file-host:6379/0"


def test_environment_alone_sets_nested_keys() -> None:
    s = load_settings(None, env={"PKGFARM_WORKER_PASSWORD": "pw", "PKGFARM_BIND": "0.0.0.0:9"})
    assert s.worker.password == "pw"
    assert s.master.bind == "0.0.0.0:9"


def test_environment_values_are_validated() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"PKGFARM_MASTER_URL": "ftp://nope"})
    assert info.value.details["key"] == "worker.master_url"


def test_config_path_from_environment(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", {"repository": {"suite": "from-env-file"}})
    s = load_settings(None, env={"PKGFARM_CONFIG": str(cfg)})
    assert s.repository.suite == "from-env-file"


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path.resolve()
    cfg = write_config(root / "etc" / "config.yaml", {
        "package_paths": ["pkgs", "../shared", "/abs/defs"],
        "master": {"data_dir": "data"},
        "worker": {"work_dir": "work"},
    })
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_settings(cfg, env={})
    assert s.package_paths == (str(root / "etc" / "pkgs"), str(root / "shared"), "/abs/defs")
    assert s.master.data_dir == str(root / "etc" / "data")
    assert s.worker.work_dir == str(root / "etc" / "work")


def test_single_package_path_string_is_a_list(tmp_path: Path) -> None:
    s = settings_from_dict({"package_paths": "defs"}, base=tmp_path)
    assert s.package_paths == (str((tmp_path / "defs").resolve()),)


def test_settings_from_dict_resolves_against_base(tmp_path: Path) -> None:
    s = settings_from_dict({"master": {"data_dir": "d"}}, base=tmp_path)
    assert s.master.data_dir == str((tmp_path / "d").resolve())


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing, env={})
    assert "cannot read config file" in info.value.message
    assert str(missing) in info.value.message


def test_unreadable_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError) as info:
        load_settings(folder, env={})
    assert "cannot read config file" in info.value.message


def test_invalid_yaml(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "bad.yaml", "master: [unclosed\n  bind: x\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert "not valid YAML" in info.value.message
    assert str(cfg) in info.value.message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert "mapping" in info.value.message


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "empty.yaml", "")
    assert load_settings(cfg, env={}).repository.suite == "stable"


def test_errors_in_the_file_name_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", "master:\n  users:\n    admin:\n"
                                            f"      password_hash: '{HASH}'\n"
                                            "      roles: [superuser]\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert info.value.details["key"] == "master.users.admin.roles"


# -- the broker ------------------------------------------------------------------------------


def test_effective_broker_url_configured(tmp_path: Path) -> None:
    s = settings_from_dict({"broker_url": "redis://broker:6379/3"}, base=tmp_path)
    assert s.effective_broker_url == "redis://broker:6379/3"


def test_effective_broker_url_embedded(tmp_path: Path) -> None:
    s = settings_from_dict({"master": {"data_dir": str(tmp_path)}})
    sock = tmp_path.resolve() / "redis" / "redis.sock"
    assert s.embedded_broker_socket == sock
    assert s.effective_broker_url == f"redis+socket://{sock}"
    assert s.effective_broker_url.startswith("redis+socket:///")


@pytest.mark.parametrize(("bind", "tls", "warned"), [
    ("127.0.0.1:8080", False, False), ("localhost:8080", False, False),
    ("[::1]:8080", False, False), ("127.0.0.2:8080", False, False),
    ("0.0.0.0:8080", False, True), ("10.0.0.5:8080", False, True),
    ("farm.example.org:443", False, True), ("0.0.0.0:8443", True, False),
])
def test_master_warns_of_clear_text_beyond_loopback(bind: str, tls: bool, warned: bool) -> None:
    from master.cli import tls_warning

    master: dict[str, Any] = {"bind": bind}
    if tls:
        master.update(tls_cert="/etc/pkgfarm/cert.pem", tls_key="/etc/pkgfarm/key.pem")
    warning = tls_warning(settings_from_dict({"master": master}))
    assert bool(warning) is warned
    if warned:
        assert bind in str(warning) and "tls_cert" in str(warning)


# -- the dashboard's keys --------------------------------------------------------------------


def test_dashboard_keys_default_to_private_pages_and_twelve_hour_sessions() -> None:
    s = settings_from_dict({})
    assert s.master.public_pages is False
    assert s.master.session_hours == 12
    s = settings_from_dict({"master": {"public_pages": True, "session_hours": 48}})
    assert s.master.public_pages is True and s.master.session_hours == 48


@pytest.mark.parametrize("value", [0, -1, 24 * 367])
def test_session_hours_out_of_range_is_named(value: int) -> None:
    exc = config_error({"master": {"session_hours": value}})
    assert exc.details["key"] == "master.session_hours"
    assert "between 1 and 8784" in exc.message


def test_public_pages_must_be_a_boolean() -> None:
    exc = config_error({"master": {"public_pages": "sometimes"}})
    assert exc.details["key"] == "master.public_pages"

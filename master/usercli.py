"""The ``master`` commands that manage users and API tokens at run time, through the master's
API with the client credentials of the config's ``client`` section (an admin's): ``users``,
``user-create``, ``user-update``, ``user-delete``, ``tokens``, ``token-create``,
``token-delete``. They never open the store themselves."""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

import click

from common.config import ROLES
from master.client_cli import _client, _print, _short, json_option


def _roles(specs: tuple[str, ...]) -> list[str]:
    wanted = [r.strip() for spec in specs for r in spec.split(",") if r.strip()]
    for role in wanted:
        if role not in ROLES:
            raise click.BadParameter(f"unknown role {role!r} (known: {', '.join(ROLES)})",
                                     param_hint="--role")
    return wanted


def _password(prompt: str = "Password") -> str:
    """A password from a prompt (twice) on a terminal, else one line of stdin."""
    if sys.stdin.isatty():
        password: str = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.UsageError("the password is empty")
    return password


def _user_rows(users: list[dict[str, Any]]) -> list[list[Any]]:
    return [[u["name"], ",".join(u["roles"]), " ".join(u["packages"]) or "any",
             "disabled" if u["disabled"] else "enabled", u["source"]] for u in users]


USER_HEADERS = ("name", "roles", "packages", "state", "source")
TOKEN_HEADERS = ("id", "name", "user", "roles", "created", "by")


def _token_rows(tokens: list[dict[str, Any]]) -> list[list[Any]]:
    return [[t["id"], t["name"], t["user"], ",".join(t["roles"]), _short(t["created_at"]),
             t["created_by"]] for t in tokens]


role_option = click.option("--role", "roles", multiple=True,
                           help=f"One of {', '.join(ROLES)}; repeat or separate with commas.")
package_option = click.option("--package", "packages", multiple=True,
                              help="A package name pattern the user may build (hello-*); "
                                   "repeat; none: every package.")


def register(cli: click.Group, config_option: Any) -> None:
    @cli.command()
    @json_option
    @config_option
    def users(as_json: bool, config_path: str | None) -> None:
        """List the users: the config file's and those made at run time."""
        data = _client(config_path).get("/api/v1/users")
        _print(data, as_json, _user_rows(data["users"]), USER_HEADERS)

    @cli.command("user-create")
    @click.argument("name")
    @role_option
    @package_option
    @json_option
    @config_option
    def user_create(name: str, roles: tuple[str, ...], packages: tuple[str, ...],
                    as_json: bool, config_path: str | None) -> None:
        """Make user NAME now (the password is read from a prompt or stdin)."""
        wanted = _roles(roles)
        if not wanted:
            raise click.UsageError("give at least one --role")
        body = {"name": name, "password": _password(), "roles": wanted,
                "packages": list(packages)}
        created = _client(config_path).request("POST", "/api/v1/users", json=body).json()
        _print(created, as_json, _user_rows([created]), USER_HEADERS)

    @cli.command("user-update")
    @click.argument("name")
    @role_option
    @package_option
    @click.option("--any-package", is_flag=True, help="Let the user build every package.")
    @click.option("--disable/--enable", "disabled", default=None,
                  help="Refuse (or admit again) the user's log-ins and tokens.")
    @click.option("--password", "new_password", is_flag=True,
                  help="Set a new password (read from a prompt or stdin).")
    @json_option
    @config_option
    def user_update(name: str, roles: tuple[str, ...], packages: tuple[str, ...],
                    any_package: bool, disabled: bool | None, new_password: bool,
                    as_json: bool, config_path: str | None) -> None:
        """Change user NAME's roles, package patterns, password, or disable it."""
        body: dict[str, Any] = {}
        if roles:
            body["roles"] = _roles(roles)
        if packages or any_package:
            body["packages"] = [] if any_package else list(packages)
        if disabled is not None:
            body["disabled"] = disabled
        if new_password:
            body["password"] = _password("New password")
        if not body:
            raise click.UsageError("nothing to change: give --role, --package, --any-package, "
                                   "--disable/--enable or --password")
        updated = _client(config_path).request("PATCH", f"/api/v1/users/{quote(name, safe='')}",
                                               json=body).json()
        _print(updated, as_json, _user_rows([updated]), USER_HEADERS)

    @cli.command("user-delete")
    @click.argument("name")
    @config_option
    def user_delete(name: str, config_path: str | None) -> None:
        """Remove user NAME (made at run time) and its tokens."""
        _client(config_path).request("DELETE", f"/api/v1/users/{quote(name, safe='')}")
        click.echo(f"user {name} removed")

    @cli.command()
    @json_option
    @config_option
    def tokens(as_json: bool, config_path: str | None) -> None:
        """List the API tokens (never their secrets)."""
        data = _client(config_path).get("/api/v1/tokens")
        _print(data, as_json, _token_rows(data["tokens"]), TOKEN_HEADERS)

    @cli.command("token-create")
    @click.argument("name")
    @role_option
    @click.option("--user", default=None, help="The user the token acts for (its roles are "
                                               "then at most the user's).")
    @json_option
    @config_option
    def token_create(name: str, roles: tuple[str, ...], user: str | None, as_json: bool,
                     config_path: str | None) -> None:
        """Make an API token NAME; prints its secret, shown this once."""
        wanted = _roles(roles)
        if not wanted:
            raise click.UsageError("give at least one --role")
        body: dict[str, Any] = {"name": name, "roles": wanted}
        if user is not None:
            body["user"] = user
        created = _client(config_path).request("POST", "/api/v1/tokens", json=body).json()
        if as_json:
            _print(created, True, [], ())
            return
        click.echo(f"token {created['id']} ({created['name']}, roles "
                   f"{','.join(created['roles'])}); it is not shown again:", err=True)
        click.echo(created["token"])

    @cli.command("token-delete")
    @click.argument("token_id", type=int)
    @config_option
    def token_delete(token_id: int, config_path: str | None) -> None:
        """Remove API token TOKEN_ID: it stops working at once."""
        _client(config_path).request("DELETE", f"/api/v1/tokens/{token_id}")
        click.echo(f"token {token_id} removed")

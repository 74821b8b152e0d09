"""Users and API tokens managed at run time (admin): made, changed and removed without editing
the config or restarting the master. Users of the config file are listed too, but they are
changed only there."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint
from werkzeug.security import generate_password_hash

from common.config import ROLES
from common.errors import BadRequest, Conflict, NotFound
from master.api.helpers import iso, json_body, svc
from master.auth import ADMIN, current_user, hash_token, new_token, require
from master.store import TokenRecord, UserRecord

bp = Blueprint("users", __name__, url_prefix="/api/v1")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
MAX_PATTERNS = 100



def check_user_name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise BadRequest(f"{field} must be 1 to 64 letters, digits or . _ @ - (starting with a "
                         "letter or digit)", field=field)
    return value


def check_roles(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(r, str) for r in value):
        raise BadRequest(f"roles must be a non-empty list of roles ({', '.join(ROLES)})",
                         field="roles")
    for role in value:
        if role not in ROLES:
            raise BadRequest(f"unknown role {role!r} (known: {', '.join(ROLES)})",
                             field="roles")
    return list(dict.fromkeys(value))


def check_password(value: Any) -> str:
    if not isinstance(value, str) or not MIN_PASSWORD <= len(value) <= MAX_PASSWORD \
            or "\x00" in value:
        raise BadRequest(f"password must be a string of {MIN_PASSWORD} to {MAX_PASSWORD} "
                         "characters", field="password")
    return value


def check_packages(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_PATTERNS or not all(
            isinstance(p, str) and p and p.isprintable() and len(p) <= 200 for p in value):
        raise BadRequest(f"packages must be a list of at most {MAX_PATTERNS} package name "
                         "patterns (such as 'hello-*')", field="packages")
    return value


def user_json(record: UserRecord) -> dict[str, Any]:
    return {"name": record.name, "roles": list(record.roles),
            "packages": list(record.packages), "disabled": record.disabled,
            "source": "store", "created_at": iso(record.created_at),
            "created_by": record.created_by}


def token_json(record: TokenRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "user": record.user,
            "roles": list(record.roles), "created_at": iso(record.created_at),
            "created_by": record.created_by}


def _config_user(name: str) -> bool:
    return name in svc().settings.master.users


def _refuse_config_user(name: str) -> None:
    if _config_user(name):
        raise Conflict(f"user {name} is defined in the config file (master.users); change "
                       "or remove it there", user=name)


@bp.get("/users")
@require(ADMIN)
def list_users() -> Any:
    services = svc()
    listed = [{"name": name, "roles": list(user.roles), "packages": list(user.packages),
               "disabled": False, "source": "config", "created_at": None,
               "created_by": None}
              for name, user in sorted(services.settings.master.users.items())]
    listed += [user_json(u) for u in services.store.accounts.users()
               if not _config_user(u.name)]
    return {"users": listed}


# -- what the API and the dashboard both do ----------------------------------------------------


def add_user(name: Any, password: Any, roles: Any, packages: Any, by: str | None) -> UserRecord:
    name = check_user_name(name)
    password = check_password(password)
    roles = check_roles(roles)
    packages = check_packages(packages)
    _refuse_config_user(name)
    created = svc().store.accounts.create_user(name, generate_password_hash(password), roles,
                                               packages, by)
    if created is None:
        raise Conflict(f"user {name} exists", user=name)
    return created


def change_user(name: str, data: dict[str, Any]) -> UserRecord:
    if not data:
        raise BadRequest("give at least one of password, roles, packages, disabled")
    _refuse_config_user(name)
    disabled = data.get("disabled")
    if "disabled" in data and not isinstance(disabled, bool):
        raise BadRequest("disabled must be true or false", field="disabled")
    updated = svc().store.accounts.update_user(
        name,
        password_hash=(generate_password_hash(check_password(data["password"]))
                       if "password" in data else None),
        roles=check_roles(data["roles"]) if "roles" in data else None,
        packages=check_packages(data["packages"]) if "packages" in data else None,
        disabled=disabled)
    if updated is None:
        raise NotFound(f"no user {name} (made at run time)", user=name)
    return updated


def remove_user(name: str) -> None:
    _refuse_config_user(name)
    if not svc().store.accounts.delete_user(name):
        raise NotFound(f"no user {name} (made at run time)", user=name)


def add_token(name: Any, roles: Any, user: Any, by: str | None) -> tuple[TokenRecord, str]:
    """A new token and its secret (shown once; the store keeps only its sha256)."""
    name = check_user_name(name)
    roles = check_roles(roles)
    if user is not None:
        check_user_name(user, "user")
        found = svc().auth.lookup(user)
        if found is None:
            raise BadRequest(f"no enabled user {user}", field="user")
        missing = [r for r in roles if r not in found[0] and ADMIN not in found[0]]
        if missing:
            raise BadRequest(f"{user} does not hold the role {missing[0]}: a token acts with "
                             "at most its user's roles", field="roles")
    secret = new_token()
    record = svc().store.accounts.create_token(name, hash_token(secret), user, roles, by)
    return record, secret


def remove_token(token_id: int) -> None:
    if not svc().store.accounts.delete_token(token_id):
        raise NotFound(f"no token {token_id}", token=token_id)


# -- the API ---------------------------------------------------------------------------------


@bp.post("/users")
@require(ADMIN)
def create_user() -> Any:
    data = json_body({"name", "password", "roles", "packages"}, {"name", "password", "roles"})
    created = add_user(data["name"], data["password"], data["roles"], data.get("packages", []),
                       current_user())
    return user_json(created), 201


@bp.patch("/users/<name>")
@require(ADMIN)
def update_user(name: str) -> Any:
    data = json_body({"password", "roles", "packages", "disabled"})
    return user_json(change_user(name, data))


@bp.delete("/users/<name>")
@require(ADMIN)
def delete_user(name: str) -> Any:
    remove_user(name)
    return {"deleted": name}


@bp.get("/tokens")
@require(ADMIN)
def list_tokens() -> Any:
    return {"tokens": [token_json(t) for t in svc().store.accounts.tokens()]}


@bp.post("/tokens")
@require(ADMIN)
def create_token() -> Any:
    data = json_body({"name", "roles", "user"}, {"name", "roles"})
    if "user" in data and not isinstance(data["user"], str):
        raise BadRequest("user must be a user's name", field="user")
    record, secret = add_token(data["name"], data["roles"], data.get("user"), current_user())
    return {**token_json(record), "token": secret}, 201


@bp.delete("/tokens/<id:token_id>")
@require(ADMIN)
def delete_token(token_id: int) -> Any:
    remove_token(token_id)
    return {"deleted": token_id}

"""Signing the repository's Release files with GnuPG; only the master holds the key.

The secret key lives in an ASCII-armoured file named by ``repository.signing_key``. At start
the master imports it into a keyring of its own under ``data_dir/gnupg`` (the user's keyring is
never used) and publishes the public key at ``/repo/key.gpg``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from common.errors import ConfigError

KEY_FILE = "key.gpg"


def _gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    result = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--no-tty", "--quiet",
         "--pinentry-mode", "loopback", "--passphrase", "", *args],
        input=data, capture_output=True,
    )
    if result.returncode != 0:
        raise ConfigError(f"gpg {args[0]} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


def _home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class Signer:
    def __init__(self, home: Path, fingerprint: str) -> None:
        self.home, self.fingerprint = home, fingerprint

    @classmethod
    def from_key_file(cls, key_file: str, data_dir: str | Path) -> Signer:
        if shutil.which("gpg") is None:
            raise ConfigError("repository.signing_key is set but gpg is not installed "
                              "(apt-get install gnupg)", key="repository.signing_key")
        try:
            secret = Path(key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"repository.signing_key: cannot read {key_file}: "
                              f"{exc.strerror}", key="repository.signing_key") from exc
        home = _home(Path(data_dir) / "gnupg")
        _gpg(home, "--import", data=secret)
        listing = _gpg(home, "--with-colons", "--list-secret-keys").decode()
        fingerprints = [line.split(":")[9] for line in listing.splitlines()
                        if line.startswith("fpr:")]
        if not fingerprints:
            raise ConfigError(f"repository.signing_key: {key_file} holds no secret key",
                              key="repository.signing_key")
        return cls(home, fingerprints[0])

    def public_key(self, armor: bool = False) -> bytes:
        """The public key: binary, as apt's signed-by reads it, or ASCII-armoured (``armor``),
        as rpm and pacman-key import it."""
        return _gpg(self.home, *(("--armor",) if armor else ()), "--export", self.fingerprint)

    def clearsign(self, data: bytes) -> bytes:
        return _gpg(self.home, "--local-user", self.fingerprint, "--digest-algo", "SHA512",
                    "--clearsign", data=data)

    def detached(self, data: bytes, armor: bool = True) -> bytes:
        """A detached signature: ASCII-armoured (Release.gpg, repomd.xml.asc) or binary
        (pacman's .sig files)."""
        return _gpg(self.home, "--local-user", self.fingerprint, "--digest-algo", "SHA512",
                    *(("--armor",) if armor else ()), "--detach-sign", data=data)


def generate_key(name: str, email: str) -> tuple[str, bytes]:
    """A new signing key (RSA 4096, no passphrase): its fingerprint and armoured secret."""
    with tempfile.TemporaryDirectory(prefix="pkgfarm-gpg-") as tmp:
        home = _home(Path(tmp) / "home")
        _gpg(home, "--quick-generate-key", f"{name} <{email}>", "rsa4096", "sign", "never")
        listing = _gpg(home, "--with-colons", "--list-secret-keys").decode()
        fingerprint = next(line.split(":")[9] for line in listing.splitlines()
                           if line.startswith("fpr:"))
        secret = _gpg(home, "--armor", "--export-secret-keys", fingerprint)
        # gpg-agent was started for this throwaway home; stop it with the folder.
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                       capture_output=True)
    return fingerprint, secret

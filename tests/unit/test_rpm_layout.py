"""The rpm repository's layout rules: aliases, what changes in place, copy order, the client
configuration, and the cached group pieces."""

from __future__ import annotations

import gzip

from common.config import settings_from_dict
from master.formats.rpm import RPM_REPOSITORY as REPO
from master.formats.rpm.index import Group, MetadataFile, assemble, render_repomd


def test_archive_alias() -> None:
    assert REPO.archive_alias("rpm/stable/packages/hi-1.0-1.noarch.rpm") == (
        "stable", "hi-1.0-1.noarch.rpm")
    for key in ("rpm/pool/packages/hi-1.0-1.noarch.rpm", "rpm/stable/packages/readme",
                "rpm/stable/packages/hi-1.0-1.src.rpm", "rpm/stable/repodata/repomd.xml",
                "rpm/stable/x/packages/hi-1.0-1.noarch.rpm", "dists/stable/InRelease",
                "rpm//packages/hi-1.0-1.noarch.rpm"):
        assert REPO.archive_alias(key) is None, key


def test_what_changes_in_place_and_the_copy_order() -> None:
    keys = ["rpm/stable/repodata/repomd.xml.asc", "rpm/stable/repodata/repomd.xml",
            "rpm/stable/repodata/" + "a" * 64 + "-primary.xml.gz",
            "rpm/pool/main/h/hi/hi-1.0-1.noarch.rpm", "rpm/RPM-GPG-KEY-pkgfarm"]
    ranks = {k: REPO.copy_rank(k) for k in keys}
    assert ranks[keys[3]] == ranks[keys[4]] == 0
    assert ranks[keys[2]] < ranks[keys[1]] < ranks[keys[0]]
    assert REPO.copy_rank("dists/stable/InRelease") is None
    assert REPO.changes_in_place(keys[0]) and REPO.changes_in_place(keys[1])
    assert not REPO.changes_in_place(keys[2]) and not REPO.changes_in_place(keys[3])


def test_client_config_signed_and_not(tmp_path) -> None:
    settings = settings_from_dict({"master": {"data_dir": str(tmp_path)},
                                   "repository": {"suite": "stable", "formats": ["rpm"]}})
    signed = REPO.client_config("http://farm/repo", settings, signer=object())  # type: ignore[arg-type]
    assert signed["url"] == "http://farm/repo/rpm/stable/"
    assert signed["key_url"] == "http://farm/repo/rpm/RPM-GPG-KEY-pkgfarm"
    assert "repo_gpgcheck=1\n" in signed["snippet"]
    assert "baseurl=http://farm/repo/rpm/stable/\n" in signed["snippet"]
    plain = REPO.client_config("http://farm/repo/", settings, signer=None)
    assert "repo_gpgcheck=0\n" in plain["snippet"] and "key_url" not in plain


def test_groups_round_trip_and_assemble_into_one_gzip_file() -> None:
    a = Group(1, (b"<package>a</package>\n", b"fa\n", b"oa\n"),
              tuple(gzip.compress(x, mtime=0) for x in (b"<package>a</package>\n", b"fa\n",
                                                        b"oa\n")))  # type: ignore[arg-type]
    assert Group.from_bytes(a.to_bytes()) == a
    b = Group(1, (b"<package>b</package>\n", b"", b""),
              (gzip.compress(b"<package>b</package>\n", mtime=0), b"", b""))
    f = assemble("primary", 2, [a, b])
    text = gzip.decompress(f.data).decode()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<metadata ')
    assert 'packages="2"' in text
    assert text.endswith("<package>a</package>\n<package>b</package>\n</metadata>")
    assert f.open_size == len(text.encode())
    assert f.href == f"repodata/{f.sha256}-primary.xml.gz"
    repomd = render_repomd([f, MetadataFile("other", b"x", "y" * 64, 1)], 7).decode()
    assert f"<open-size>{len(text.encode())}</open-size>" in repomd
    assert "<revision>7</revision>" in repomd

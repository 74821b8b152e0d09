"""The repository in an S3 bucket: the same end-to-end build as on local disk, served through
the master, and a local repository moved into the bucket with one command."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator

import pytest
import requests
import yaml

from tests.integration.conftest import Farm
from tests.integration.farm import BIN, parse_packages
from tests.integration.test_end_to_end import check_build_set
from tests.s3server import MotoServer


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("serve", ["proxy", "redirect"])
def test_end_to_end_with_s3_storage(s3, tmp_path, serve):
    bucket = s3.create_bucket(f"farm-{serve}")
    farm = Farm(tmp_path, extra={"storage": s3.settings(bucket, prefix="debian/",
                                                        serve=serve)})
    try:
        farm.start({"w-amd64": ["amd64"], "w-arm64": ["arm64"]})
        check_build_set(farm.master, tmp_path)
        # The pool and the index are in the bucket, not on the master's disk.
        keys = {o["Key"] for o in s3.client().list_objects_v2(
            Bucket=bucket, Prefix="debian/")["Contents"]}
        assert "debian/dists/stable/Release" in keys
        assert any(k.startswith("debian/pool/main/i/itest-arm64/") for k in keys)
        assert not list((farm.data_dir / "repo").rglob("*.deb"))
    finally:
        farm.stop()


def test_repo_migrate_moves_a_local_repository_into_s3(s3, tmp_path):
    farm = Farm(tmp_path, extra={})
    try:
        farm.start({"w-amd64": ["amd64"]})
        assert farm.master.wait_build(farm.master.submit(["itest-all"]))["status"] == "success"
    finally:
        farm.stop()
    bucket = s3.create_bucket("farm-migrated")
    config = yaml.safe_load(farm.config.read_text())
    config["storage"] = s3.settings(bucket)
    farm.config.write_text(yaml.safe_dump(config))
    result = subprocess.run([str(BIN / "master"), "repo-migrate", "--to", "s3", "--config",
                             str(farm.config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # The master now serves the same repository from the bucket.
    farm.redis.start()
    farm.master.start()
    try:
        index = requests.get(f"{farm.master.url}/repo/dists/stable/main/binary-amd64/Packages",
                             timeout=10).text
        (entry,) = [s for s in parse_packages(index) if s["Package"] == "itest-all"]
        deb = requests.get(f"{farm.master.url}/repo/{entry['Filename']}", timeout=10)
        assert deb.status_code == 200
        assert hashlib.sha256(deb.content).hexdigest() == entry["SHA256"]
    finally:
        farm.master.stop()
        farm.redis.stop()

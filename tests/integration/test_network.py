"""Network loss of a worker: one worker sits in a network namespace behind a veth pair.

The master and its redis-server listen only on the host end of the veth pair; one worker runs
inside the namespace (`ip netns exec`), another on the host. Taking the host end down cuts the
namespaced worker off from the master and the broker while the rest of the farm keeps running.
Every address is in a private /30 that exists only on this veth pair, so no traffic leaves it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.farm import (
    FINAL,
    TEST_PACKAGES,
    AptClient,
    Master,
    RedisServer,
    Worker,
    assert_consistent,
    free_port,
    parse_packages,
    sha256_file,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.timeout(240)

LEASE = 6  # master.lease_seconds: workers renew every LEASE / 4
ARCHES = ("amd64", "arm64")
NS_USER, HOST_USER = "worker2", "worker"  # who uploaded shows in the packages API

# gunicorn's access log: '%(h)s %(u)s "%(r)s" %(s)s %(b)s %(M)sms'
ACCESS_LINE = re.compile(r'^(?P<addr>\S+) (?P<user>\S+) "(?P<method>[A-Z]+) (?P<path>\S+) '
                         r'HTTP/[0-9.]+" (?P<status>\d{3}) ', re.MULTILINE)


# -- the network namespace and its veth pair --------------------------------------------------


def _ip(*args: str, netns: str | None = None, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): "
                           f"{result.stderr.strip()}")
    return result


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of 10.213.0.0/16 that no address on this host overlaps (10.213.7.0/30 if free)."""
    used = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    pool = list(ipaddress.ip_network("10.213.0.0/16").subnets(new_prefix=30))
    first = pool.index(ipaddress.ip_network("10.213.7.0/30"))
    # Start at 10.213.7.0/30; another run of this test holding it pushes this one further.
    for offset in range(len(pool)):
        net = pool[(first + offset) % len(pool)]
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free /30 in 10.213.0.0/16 on this host")


class NetNamespace:
    """`pf-net-<pid>` joined to the host by a veth pair; the host end can be taken down."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.name = f"pf-net-{pid}"
        self.host_if, self.ns_if = f"pfh{pid}", f"pfn{pid}"
        self.made_ns = self.made_link = False
        self.host_addr = self.ns_addr = ""

    def create(self) -> None:
        if shutil.which("ip") is None:
            pytest.skip("network namespaces cannot be created here: `ip` (iproute2) is missing")
        added = _ip("netns", "add", self.name, check=False)
        if added.returncode != 0:
            pytest.skip(f"network namespaces cannot be created here: `ip netns add {self.name}` "
                        f"failed ({added.stderr.strip()}); this test needs root (CAP_SYS_ADMIN "
                        f"and CAP_NET_ADMIN)")
        self.made_ns = True
        veth = _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                   check=False)
        if veth.returncode != 0:
            pytest.skip(f"network namespaces cannot be used here (`ip link add ... type veth` "
                        f"failed): {veth.stderr.strip()}")
        self.made_link = True
        net = _free_subnet()
        host, ns = (str(a) for a in net.hosts())
        _ip("link", "set", self.ns_if, "netns", self.name)
        _ip("addr", "add", f"{host}/{net.prefixlen}", "dev", self.host_if)
        _ip("addr", "add", f"{ns}/{net.prefixlen}", "dev", self.ns_if, netns=self.name)
        _ip("link", "set", "lo", "up", netns=self.name)
        _ip("link", "set", self.ns_if, "up", netns=self.name)
        self.host_addr, self.ns_addr = host, ns
        self.restore()

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_if, "up")
        wait_for(lambda: "LOWER_UP" in _ip("-o", "link", "show", self.host_if).stdout, 10,
                 f"{self.host_if} to come up")

    def destroy(self) -> None:
        if self.made_link:  # deleting one end deletes the pair, wherever the other end is
            _ip("link", "del", self.host_if, check=False)
        if self.made_ns:
            _ip("netns", "del", self.name, check=False)


# -- the farm: master and redis on the host end, one worker on each side ------------------------


class NetFarm:
    def __init__(self, root: Path, net: NetNamespace) -> None:
        self.root, self.net = root, net
        self.started: list[Any] = []
        self.redis = RedisServer(root / "redis", host=net.host_addr)
        self.port = free_port()
        url = f"http://{net.host_addr}:{self.port}"
        common: dict[str, Any] = {
            "data_dir": root / "data", "port": self.port, "broker_url": self.redis.url,
            "package_paths": [TEST_PACKAGES], "architectures": ARCHES,
            "extra_master": {"bind": f"{net.host_addr}:{self.port}", "lease_seconds": LEASE},
        }
        self.config = write_config(root / "config.yaml", **common,
                                   extra_worker={"master_url": url, "username": HOST_USER})
        ns_config = write_config(root / "ns-worker.yaml", **common,
                                 extra_worker={"master_url": url, "username": NS_USER})
        self.master = Master(self.config, self.port, root / "master.log", host=net.host_addr)
        # Tagged arm64: it alone takes arm64 builds; both workers take `all` ones.
        self.ns_worker = Worker(ns_config, "net-ns", ["arm64"], root / "net-ns.log",
                                prefix=["ip", "netns", "exec", net.name])
        self.host_worker = Worker(self.config, "net-host", ["amd64"], root / "net-host.log")

    def start(self, part: Any) -> None:
        self.started.append(part)
        part.start()

    def start_host_worker(self) -> None:
        if self.host_worker not in self.started:
            self.start(self.host_worker)

    def stop(self) -> None:
        """Stop every part started, newest first, even when stopping one of them fails."""
        errors = []
        for part in reversed(self.started):
            try:
                part.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def job(self, build_id: int) -> dict[str, Any]:
        (job,) = self.master.api("GET", f"/api/v1/builds/{build_id}").json()["jobs"]
        return job

    def access_log(self, addr: str) -> list[re.Match[str]]:
        """The master's answers to requests that came from ``addr``, oldest first."""
        text = self.master.log.read_text(errors="replace")
        return [m for m in ACCESS_LINE.finditer(text) if m["addr"] == addr]

    def job_requests(self, addr: str, job_id: int) -> list[re.Match[str]]:
        """Requests from ``addr`` about job ``job_id`` (claim, lease, log, report, upload)."""
        mine = re.compile(rf"^/api/v1/jobs/{job_id}/|^/api/v1/upload\?.*\bjob={job_id}\b")
        return [m for m in self.access_log(addr) if mine.search(m["path"])]


@pytest.fixture(scope="module")
def net_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetFarm]:
    net = NetNamespace()
    farm: NetFarm | None = None
    try:
        net.create()
        farm = NetFarm(tmp_path_factory.mktemp("netfarm"), net)
        farm.start(farm.redis)
        farm.start(farm.master)
        farm.start(farm.ns_worker)
        yield farm
    finally:
        try:
            if farm is not None:
                # The link comes back first, so that the worker inside can say goodbye.
                with contextlib.suppress(Exception):
                    net.restore()
                farm.stop()
        finally:
            net.destroy()


@pytest.fixture
def link(net_farm: NetFarm) -> Iterator[NetNamespace]:
    """The veth link, up at the start and brought back up at the end of every test."""
    net_farm.net.restore()
    try:
        yield net_farm.net
    finally:
        net_farm.net.restore()


# -- what the user sees ----------------------------------------------------------------------


def wait_mid_build(farm: NetFarm, build_id: int) -> dict[str, Any]:
    """Wait until the namespaced worker holds attempt 1 and has renewed its lease once."""
    job = wait_for(lambda: (j := farm.job(build_id))["status"] == "building" and j,
                   30, f"build {build_id} to be claimed")
    assert (job["worker"], job["attempt"]) == (farm.ns_worker.name, 1), job
    wait_for(lambda: any(m["path"] == f"/api/v1/jobs/{job['id']}/lease" and m["status"] == "200"
                         for m in farm.job_requests(farm.net.ns_addr, job["id"])),
             LEASE, f"a lease renewal of job {job['id']} from {farm.net.ns_addr}")
    return job


def endpoint(request: re.Match[str]) -> str:
    """The last part of a logged request's path: claim, lease, log, report, upload."""
    return request["path"].split("?")[0].rsplit("/", 1)[1]


def assert_published_once(farm: NetFarm, name: str, uploaded_by: str) -> dict[str, Any]:
    """The archive is in the packages API once, and once in the index of every arch it serves."""
    records = farm.master.api("GET", f"/api/v1/packages?name={name}").json()["packages"]
    assert len(records) == 1, records
    (record,) = records
    assert record["in_index"] and record["uploaded_by"] == uploaded_by, record
    arches = ARCHES if record["arch"] == "all" else (record["arch"],)
    for arch in arches:
        stanzas = [s for s in parse_packages(farm.master.index(arch)) if s["Package"] == name]
        assert len(stanzas) == 1, (arch, stanzas)
        assert stanzas[0]["Filename"] == record["pool_path"], (stanzas[0], record)
        assert stanzas[0]["SHA256"] == record["sha256"], (stanzas[0], record)
    return record


def test_worker_cut_off_longer_than_the_lease_loses_the_build(net_farm, link, tmp_path):
    farm, master = net_farm, net_farm.master
    build_id = master.submit(["itest-net-cut"])
    job = wait_mid_build(farm, build_id)
    ns_addr = link.ns_addr

    link.cut()
    cut = time.monotonic()
    # The other worker joins only now, so attempt 1 was the namespaced worker's for sure.
    farm.start_host_worker()
    requeued = wait_for(lambda: (j := farm.job(build_id))["attempt"] >= 2 and j,
                        LEASE + 15, "the master to re-queue the attempt of the cut-off worker")
    # The lease was renewed at most LEASE / 4 before the cut: no earlier re-queue than that.
    assert time.monotonic() - cut >= LEASE * 3 / 4 - 0.5, requeued
    done = wait_for(lambda: (j := farm.job(build_id))["status"] in FINAL and j, 45,
                    "the host worker to build the re-queued attempt")
    assert done["status"] == "success", done
    assert done["attempt"] >= 2 and done["worker"] == farm.host_worker.name, done
    assert time.monotonic() - cut > LEASE  # the link was down longer than the lease

    link.restore()
    # Back on the network, the namespaced worker's late upload (or report) is refused.
    wait_for(lambda: any(m["status"] == "409" and endpoint(m) in ("upload", "report")
                         for m in farm.job_requests(ns_addr, job["id"])),
             60, f"the master to refuse the late upload of {farm.ns_worker.name}")
    wait_for(lambda: "'lost'" in farm.ns_worker.log.read_text(errors="replace"), 60,
             f"{farm.ns_worker.name} to give up attempt 1 (log: {farm.ns_worker.log})")
    calls = farm.job_requests(ns_addr, job["id"])
    refused = [m for m in calls if m["status"] == "409"]
    assert {endpoint(m) for m in refused} <= {"lease", "log", "report", "upload"}, [
        m.group(0) for m in refused]
    accepted = [m.group(0) for m in calls if m["status"].startswith("2")
                and (m["path"].startswith("/api/v1/upload") or m["path"].endswith("/report"))]
    assert not accepted, accepted
    claims = [m["status"] for m in calls if m["path"].endswith("/claim")]
    assert claims.count("200") == 1, claims

    # What the user sees: one successful job on its second attempt, one archive, published by
    # the host worker, that apt-get downloads with the index's checksum.
    after = farm.job(build_id)
    assert (after["status"], after["attempt"], after["worker"]) == (
        "success", done["attempt"], farm.host_worker.name), after
    assert [f for f in after["files"] if f.endswith(".deb")] == [
        "itest-net-cut_1.0-1_all.deb"], after
    record = assert_published_once(farm, "itest-net-cut", uploaded_by=HOST_USER)
    apt = AptClient(tmp_path / "apt", f"deb [trusted=yes] {master.url}/repo stable main", ARCHES)
    apt.update()
    deb = apt.download("itest-net-cut")
    assert sha256_file(deb) == record["sha256"]
    assert_consistent(farm.master, tmp_path / "apt-check", ARCHES)


def test_short_cut_within_the_lease_keeps_the_build(net_farm, link, tmp_path):
    farm = net_farm
    build_id = farm.master.submit(["itest-net-blip"])
    job = wait_mid_build(farm, build_id)

    link.cut()
    time.sleep(2)
    link.restore()

    done = farm.master.wait_build(build_id, timeout=45)
    (final,) = done["jobs"]
    assert (final["status"], final["attempt"], final["worker"]) == (
        "success", 1, farm.ns_worker.name), final
    assert [f for f in final["files"] if f.endswith(".deb")] == [
        "itest-net-blip_1.0-1_arm64.deb"], final
    calls = farm.job_requests(farm.net.ns_addr, job["id"])
    assert not [m.group(0) for m in calls if m["status"] == "409"], calls
    assert_published_once(farm, "itest-net-blip", uploaded_by=NS_USER)
    assert_consistent(farm.master, tmp_path / "apt-check", ARCHES)

"""The several-host harness itself: hosts that share only a network with the server host.

Two network namespaces as GPU hosts, the root namespace as the server host with Redis,
PostgreSQL (both behind relays: they listen on 127.0.0.1 only) and moto's S3 server on
the bridge's address. Each host reaches all three over the virtual network, sees only
its own folder, and nothing of the run is left once the harness is closed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import port_open
from tests.support.netns import Hosts, netns_unavailable
from tests.support.s3server import S3_ENV, make_bucket, moto_missing, moto_server

PROBE = r"""
import json, os, socket, sys
from pathlib import Path
import psycopg, redis
from quanta_jobs.store import S3Store
server, redis_port, pg_port, s3, me, others = sys.argv[1:7]
seen = {}
seen["redis"] = redis.Redis(host=server, port=int(redis_port), db=7).ping()
with psycopg.connect(f"host={server} port={pg_port} user=postgres dbname=test",
                     connect_timeout=5) as conn:
    seen["postgres"] = conn.execute("SELECT 41 + 1").fetchone()[0]
store = S3Store("netns", me, endpoint_url=s3)
seen["s3_put"] = store.put("hello.txt", me.encode()).sha256
seen["s3_list"] = [o.key for o in S3Store("netns", "", endpoint_url=s3).list()]
try:
    socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    seen["root_loopback"] = True
except OSError:
    seen["root_loopback"] = False
own = Path.cwd()
(own / "mine.txt").write_text(me)
seen["cwd"] = str(own)
seen["own_files"] = sorted(p.name for p in own.iterdir())
seen["others_visible"] = [o for o in others.split(",") if os.path.exists(o)]
print(json.dumps(seen))
"""


@pytest.fixture
def hosts(tmp_path: Path):
    reason = netns_unavailable() or moto_missing()
    if reason:
        pytest.skip(reason)
    if not (port_open("127.0.0.1", 6379) and port_open("127.0.0.1", 5432)):
        pytest.skip("Redis (127.0.0.1:6379) or PostgreSQL (127.0.0.1:5432) is not running")
    with Hosts(tmp_path, ["gpu-a", "gpu-b"]) as made:
        yield made


def test_two_hosts_reach_the_servers_and_only_their_own_folder(hosts: Hosts) -> None:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert hosts["gpu-a"].netns in listed and hosts["gpu-b"].netns in listed
    redis_port = hosts.forward(6379, listen_port=hosts.free_port())
    pg_port = hosts.forward(5432, listen_port=hosts.free_port())
    secret = hosts.server_folder / "artifacts" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("the API's disk")
    with moto_server(hosts.server_ip) as s3:
        make_bucket(s3, "netns")
        env = {**os.environ, **S3_ENV}
        results = {}
        for name, host in hosts.hosts.items():
            others = [str(h.folder) for h in hosts.hosts.values() if h is not host]
            others.append(str(secret))
            done = host.run([sys.executable, "-c", PROBE, hosts.server_ip, str(redis_port),
                             str(pg_port), s3, name, ",".join(others)], env=env, timeout=120)
            assert done.returncode == 0, done.stderr
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    for name, seen in results.items():
        assert seen["redis"] is True and seen["postgres"] == 42
        assert seen["root_loopback"] is False  # the server's 127.0.0.1 is out of reach
        assert seen["cwd"] == str(hosts[name].folder)
        assert seen["others_visible"] == []  # neither the other host's nor the API's files
        assert seen["own_files"] == ["mine.txt"]
        assert (hosts[name].folder / "mine.txt").read_text() == name  # written for real
    assert "gpu-a/hello.txt" in results["gpu-b"]["s3_list"] or \
        "gpu-b/hello.txt" in results["gpu-a"]["s3_list"]  # the later host saw the earlier's


def test_close_leaves_nothing_behind(tmp_path: Path) -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    hosts = Hosts(tmp_path, ["x", "y", "z"])
    sleeper = hosts["x"].popen(["sleep", "300"])
    assert len(hosts.names()) == 3 + 1 + 3  # namespaces, bridge, veths
    hosts.close()
    assert hosts.names() == []
    assert sleeper.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert hosts.run_id not in listed


def _state() -> tuple[str, str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return netns, "\n".join(line.split(":")[1] for line in links.splitlines())


def test_a_failed_setup_cleans_up(tmp_path: Path) -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    before = _state()
    # The second host of the same name fails half-way through the setup.
    with pytest.raises((subprocess.CalledProcessError, FileExistsError)):
        Hosts(tmp_path, ["ok", "ok"])
    assert _state() == before

"""`dgl embed --ray auto` on a real two-node Ray cluster on this machine: a head (`ray start --head`) and a second
node (`ray start --address`), two raylets on loopback. The rows equal a local run's, and files were decoded on
both nodes (the job logs the node of each decoded file)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dgl_deploy.cli import app as cli_app
from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.model.checkpoint import save
from dgl_deploy.model.model import create_model
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.store import open_store
from dgl_deploy.runtime.backends.select import open_encoder

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # two raylets start in ~20 s on 2 cores, the job takes about a minute

RAY = Path(sys.executable).with_name("ray")  # the `ray` CLI of this environment
NODE_OPTIONS = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--object-store-memory=200000000",
                "--disable-usage-stats"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_node(log: Path, *options: str) -> subprocess.Popen:
    """`ray start --block ...` in its own session: killing that session stops every process of the node."""
    with open(log, "ab") as out:
        return subprocess.Popen([str(RAY), "start", *NODE_OPTIONS, f"--dashboard-agent-listen-port={_free_port()}",
                                 *options], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _alive_nodes(address: str, want: int, timeout: float, node: subprocess.Popen) -> list[str]:
    """The ids of the cluster's alive nodes once there are `want` of them (connecting as a driver, then leaving);
    fails at once if the `node` just started exits."""
    deadline = time.time() + timeout
    while True:
        if node.poll() is not None:
            pytest.fail(f"`ray start` exited with {node.returncode} (its log is in the cluster's temp folder)")
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
            try:
                while time.time() < deadline:
                    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
                    if len(nodes) >= want:
                        return nodes
                    time.sleep(0.5)
            finally:
                ray.shutdown()
        except ConnectionError:
            if time.time() > deadline:
                raise
            time.sleep(1)
        pytest.fail(f"the Ray cluster at {address} did not reach {want} nodes in {timeout:g} s")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, list[str]]]:
    """(address, node ids) of a two-node cluster; stopped by killing the sessions of both `ray start` processes.
    Token authentication is off for the loopback cluster (nodes, drivers and `dgl embed --ray` alike): with a token
    file another cluster left in ~/.ray, the nodes refused each other here (Ray 2.60: InvalidAuthToken)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        yield from _cluster()


def _cluster() -> Iterator[tuple[str, list[str]]]:
    temp = Path(tempfile.mkdtemp(prefix="dglray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    address = f"127.0.0.1:{_free_port()}"
    nodes = [_start_node(temp / "head.log", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false",
                         f"--temp-dir={temp}")]
    try:
        _alive_nodes(address, 1, 120, nodes[0])
        nodes.append(_start_node(temp / "worker.log", f"--address={address}"))
        yield address, _alive_nodes(address, 2, 120, nodes[1])
    finally:
        for proc in nodes:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.timeout(600)
def test_embed_on_two_nodes(cluster, tmp_path, monkeypatch, caplog) -> None:
    address, node_ids = cluster
    make_synthetic(tmp_path / "videos", videos=8, seed=5)
    save(create_model("dgl-tiny", pretrained=None), tmp_path / "model.safetensors")
    encoder = open_encoder(tmp_path / "model.safetensors", backend="torch", log=None)
    embed_videos(tmp_path / "videos", tmp_path / "ref" / "emb.npy", encoder, EmbedSettings(workers=1),
                 model=str(tmp_path / "model.safetensors"))

    monkeypatch.setenv("RAY_ADDRESS", address)  # what `--ray auto` connects to
    caplog.set_level(logging.INFO, logger="dgl_deploy.retrieval.ray_embed")
    try:
        result = CliRunner().invoke(cli_app, ["embed", str(tmp_path / "videos"), "--out", str(tmp_path / "emb.npy"),
                                              "--model", str(tmp_path / "model.safetensors"), "--batch-size", "2",
                                              "--quiet", "--ray", "auto"])
        assert result.exit_code == 0, result.output
        assert len(ray.nodes()) == 2  # the job ran on the cluster started above, not a local one
    finally:
        ray.shutdown()
    ref, got = open_store(tmp_path / "ref" / "emb.npy"), open_store(tmp_path / "emb.npy")
    assert got.ids == ref.ids and len(got.ids) == 8
    np.testing.assert_allclose(np.asarray(got.vectors), np.asarray(ref.vectors), atol=1e-5)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("ray: "))
    decoded = dict(re.findall(r"([0-9a-f]{56}): (\d+)", line))
    assert "8 files decoded on 2 nodes" in line and set(decoded) == set(node_ids), line
    assert all(int(count) >= 1 for count in decoded.values())

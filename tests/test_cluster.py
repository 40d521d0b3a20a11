"""Operations drills with real processes: a 2-node Ray cluster started with `ray start` (one node
leaves mid-sweep), a real `mlflow server` that goes away mid-sweep and comes back, a trial worker
killed with SIGKILL, and a driver killed with SIGKILL then resumed. Each drill checks that nothing
was lost: every trial finishes, no epoch is trained twice, every epoch's metrics reach MLflow."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from cobra.config import unflatten
from tests.conftest import TINY_OVERRIDES, trial_runs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.cluster]
RAY = str(Path(sys.executable).with_name("ray"))
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_sweep(tmp: Path, data_root: Path, name: str, space: dict, **extra) -> Path:
    base = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY_OVERRIDES)}
    base.update({"data.root": str(data_root), "train.epochs": 3,
                 "train.max_steps_per_epoch": 3})
    sweep = {"name": name, "base": unflatten(base), "space": space,
             "search": {"algorithm": "grid", "seed": 0}, "resources": {"cpu": 1},
             "max_concurrent": 2, "max_failures": 2, "storage": str(tmp / "shared" / "ray"),
             "mlflow": {"experiment": "drills"}, **extra}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def start_sweep(path: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "sweep", str(path), *extra],
                            cwd=path.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: int = 600) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    # stdout and stderr are merged: Ray may log after the command's JSON line
    return json.loads([ln for ln in out.splitlines() if ln.startswith('{"sweep"')][-1])


def trials(client: MlflowClient, status: str | None = None) -> list:
    return trial_runs(client, "drills", status)


def wait_for(predicate, timeout: float = 300, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting for the drill's precondition")


def epochs_logged(client: MlflowClient, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss_cls"))


def assert_nothing_lost(client: MlflowClient, result: dict, expected_trials: int) -> None:
    done = trials(client, "FINISHED")
    assert result["trials"] == expected_trials and result["errored"] == 0
    assert len(done) == expected_trials
    for run in done:  # every epoch once: restarts resumed from checkpoints, no metric dropped
        assert epochs_logged(client, run) == [0, 1, 2], run.info.run_name
        assert "seed_miou" in run.data.metrics


def token_env(tmp_path: Path) -> dict:
    """Ray's token auth on, as docker/README.md sets it up: every node (and the driver) reads the
    cluster's token from a private file named by RAY_AUTH_TOKEN_PATH."""
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


@pytest.fixture
def env(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    environ = {**os.environ, "MLFLOW_TRACKING_URI": uri, **token_env(tmp_path)}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        environ.pop(key, None)
    return {"uri": uri, "environ": environ, "dir": tmp_path}


def node_pid(node_id: str) -> int:
    """The raylet process of one Ray node (its command line names the node id)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="ignore")
            except OSError:
                continue
            if "raylet" in cmd and f"--node_id={node_id}" in cmd:
                return int(proc.name)
    raise AssertionError(f"no raylet for node {node_id}")


def test_two_node_cluster_uses_both_nodes_and_survives_one_leaving(env, tiny_data_root):
    port = free_port()
    environ = env["environ"]
    start = [RAY, "start", "--num-cpus=1", "--node-ip-address=127.0.0.1",
             "--disable-usage-stats"]
    subprocess.run([*start, "--head", f"--port={port}", "--include-dashboard=false"],
                   env=environ, check=True, capture_output=True, timeout=120)
    try:
        # token auth is on: a node without the cluster's token is refused ...
        intruder = subprocess.run([*start, f"--address=127.0.0.1:{port}"],
                                  env={**environ, "RAY_AUTH_TOKEN_PATH": "",
                                       "RAY_AUTH_TOKEN": secrets.token_hex(32)},
                                  capture_output=True, text=True, timeout=180)
        assert intruder.returncode != 0 and "InvalidAuthToken" in intruder.stdout + intruder.stderr
        # ... and one with it joins
        subprocess.run([*start, f"--address=127.0.0.1:{port}"], env=environ, check=True,
                       capture_output=True, timeout=120)
        path = write_sweep(env["dir"], tiny_data_root, "two_nodes",
                           {"loss.k_cap_pos": [1, 2, 3]})
        proc = start_sweep(path, {**environ, "RAY_ADDRESS": f"127.0.0.1:{port}"})
        client = MlflowClient(env["uri"])

        def both_nodes_busy():
            running = [r for r in trials(client, "RUNNING") if epochs_logged(client, r)]
            nodes = {r.data.tags["ray_node_id"] for r in running}
            return running if len(nodes) == 2 else None

        running = wait_for(both_nodes_busy)
        head_id = subprocess.run(
            [sys.executable, "-c", "import ray; ray.init(address='auto', logging_level='ERROR');"
             "print(ray.get_runtime_context().get_node_id())"],
            env={**environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}, capture_output=True,
            text=True, timeout=120).stdout.strip().splitlines()[-1]
        worker_id = next(r.data.tags["ray_node_id"] for r in running
                         if r.data.tags["ray_node_id"] != head_id)
        os.kill(node_pid(worker_id), signal.SIGKILL)  # the worker node leaves mid-trial

        result = finish(proc)
        client = MlflowClient(env["uri"])
        assert_nothing_lost(client, result, 3)
        history = ",".join(r.data.tags["ray_node_history"] for r in trials(client))
        assert worker_id in history and head_id in history
    finally:
        subprocess.run([RAY, "stop", "--force"], env=environ, capture_output=True, timeout=120)


def test_killed_trial_worker_restarts_from_its_checkpoint(env, tiny_data_root):
    path = write_sweep(env["dir"], tiny_data_root, "kill_worker", {"loss.k_cap_pos": [1, 2]})
    proc = start_sweep(path, env["environ"])
    client = MlflowClient(env["uri"])
    victim = wait_for(lambda: next((r for r in trials(client, "RUNNING")
                                    if epochs_logged(client, r) == [0]), None))
    os.kill(int(victim.data.tags["ray_worker_pid"]), signal.SIGKILL)
    result = finish(proc)
    assert_nothing_lost(MlflowClient(env["uri"]), result, 2)


def test_killed_driver_resumes_without_rerunning_or_losing_trials(env, tiny_data_root):
    path = write_sweep(env["dir"], tiny_data_root, "kill_driver", {"loss.k_cap_pos": [1, 2, 3]},
                       max_concurrent=1)
    proc = start_sweep(path, env["environ"])
    client = MlflowClient(env["uri"])
    first = wait_for(lambda: next(iter(trials(client, "FINISHED")), None))
    wait_for(lambda: any(epochs_logged(client, r) for r in trials(client, "RUNNING")))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    subprocess.run([RAY, "stop", "--force"], env=env["environ"], capture_output=True, timeout=120)

    result = finish(start_sweep(path, env["environ"], "--resume"))
    client = MlflowClient(env["uri"])
    assert_nothing_lost(client, result, 3)
    again = client.get_run(first.info.run_id)
    assert again.info.end_time == first.info.end_time  # the finished trial was not re-run


def test_mlflow_server_outage_loses_no_metrics(env, tiny_data_root):
    port = free_port()
    store = env["dir"] / "server"
    store.mkdir()
    server_cmd = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port),
                  "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                  "--artifacts-destination", str(store / "artifacts"), "--workers", "1"]

    def serve() -> subprocess.Popen:
        server = subprocess.Popen(server_cmd, env=env["environ"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: _healthy(port), timeout=120)
        return server

    server = serve()
    uri = f"http://127.0.0.1:{port}"
    environ = {**env["environ"], "MLFLOW_TRACKING_URI": uri}
    path = write_sweep(env["dir"], tiny_data_root, "outage", {"loss.k_cap_pos": [1, 2]})
    proc = start_sweep(path, environ)
    client = MlflowClient(uri)
    try:
        wait_for(lambda: any(epochs_logged(client, r) for r in trials(client, "RUNNING")))
        os.killpg(server.pid, signal.SIGTERM)  # the server goes away mid-sweep ...
        server.wait(timeout=60)
        time.sleep(10)
        server = serve()  # ... and comes back: the buffered metrics are written then
        result = finish(proc)
        assert_nothing_lost(MlflowClient(uri), result, 2)
    finally:
        os.killpg(server.pid, signal.SIGTERM)


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False

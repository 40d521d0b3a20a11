"""The compose drill (issue 11), with real images, containers, PostgreSQL, MLflow and Ray.

docker/drill.sh builds cobra:cpu (not cobra:gpu: the CPU workers run the CPU image), starts
docker/compose.yaml with compose.cpu-workers.yaml (PostgreSQL-backed MLflow with basic auth, a Ray
head and two CPU workers with token auth), and runs a two-trial sweep from the head. This test then reads every trial back from the host through MLflow's client,
logged in, and checks that the runs spread over both workers, that a request without a login is
refused, and that the drill's output never shows a secret. Needs a Docker engine with the Compose
v2 plugin; it skips only when those are missing. The first run builds the images (tens of
minutes on 2 cores); later runs reuse Docker's layer cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
DRILL = ROOT / "docker" / "drill.sh"
pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(7200)]


def _docker_missing() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH (install Docker Engine 24+ to run the compose drill)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "no Docker engine answers `docker info` (start dockerd to run the compose drill)"
    if subprocess.run(["docker", "compose", "version"], capture_output=True,
                      timeout=60).returncode != 0:
        return "the Docker Compose v2 plugin is missing (`docker compose version` fails)"
    return None


def _env_file(path: Path) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in path.read_text().splitlines() if "=" in ln)


def _json_after(out: str, prefix: str) -> dict:
    lines = [ln[len(prefix):] for ln in out.splitlines() if ln.startswith(prefix)]
    assert lines, f"no line starting {prefix!r} in:\n{out}"
    return json.loads(lines[-1])


def _status_without_login(uri: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=5")
    if user:
        import base64

        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_compose_stack_runs_a_sweep_on_both_workers_with_auth_on(tmp_path, monkeypatch):
    reason = _docker_missing()
    if reason:
        pytest.skip(reason)
    state = tmp_path / "drill"
    env = {**os.environ, "KEEP": "1", "STATE": str(state), "PYTHON": sys.executable}
    try:
        run = subprocess.run(["bash", str(DRILL)], env=env, capture_output=True, text=True,
                             timeout=7000)
        print(run.stdout)  # the drill's record (pytest -s shows it)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        out = run.stdout
        services = [ln.split()[2] for ln in out.splitlines() if ln.startswith("drill: service ")]
        assert sorted(services) == ["mlflow", "postgres", "ray-head", "ray-worker", "ray-worker"]
        workers = {ln.split()[3] for ln in out.splitlines()
                   if ln.startswith("drill: ray node ") and ln.split()[4] == "worker"}
        assert len(workers) == 2
        assert "drill: ray: a driver with a wrong token is refused (InvalidAuthToken)" in out

        sweep = _json_after(out, "drill: sweep result ")
        assert sweep["trials"] == 2 and sweep["errored"] == 0, sweep
        back = _json_after(out, "drill: read-back ")
        assert back == {"user": "admin", "trials": 2, "finished": 2, "nodes": 2,
                        "anonymous_http_status": 401}, back

        secrets = _env_file(state / "env")
        for key in ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY",
                    "RAY_AUTH_TOKEN"):
            assert secrets[key] not in out + run.stderr, f"{key} was echoed"

        # Independently of the drill's own read-back: the host, through the published port.
        uri = f"http://127.0.0.1:{secrets['MLFLOW_HOST_PORT']}"
        assert _status_without_login(uri) == 401
        assert _status_without_login(uri, "admin", "not-the-password") == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secrets["MLFLOW_ADMIN_PASSWORD"])
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("drill")
        trials = client.search_runs([exp.experiment_id], "tags.`cobra.kind` = 'trial'")
        assert len(trials) == 2
        assert {r.data.tags["ray_node_id"][:12] for r in trials} == workers
        for run_ in trials:
            assert run_.info.status == "FINISHED"
            assert "seed_miou" in run_.data.metrics
            epochs = sorted(m.step for m in client.get_metric_history(run_.info.run_id,
                                                                       "loss_cls"))
            assert epochs == [0, 1], run_.info.run_name
        parent = client.search_runs([exp.experiment_id], "tags.`cobra.kind` = 'sweep'")
        assert [p.info.status for p in parent] == ["FINISHED"]
    finally:
        subprocess.run(["bash", str(DRILL), "down"], env=env, capture_output=True, timeout=900)

"""Security (issue 11): no default password ships, MLflow asks for a login and the sweep checks it
before any trial starts, Ray's token auth stays on, and a password in MLFLOW_TRACKING_URI is
never echoed. The compose stack itself runs in tests/test_compose.py (marked `cluster`)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from mlflow.tracking import MlflowClient

from cobra.errors import TrackingError
from cobra.tracking import check_reachable

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
SECRETS = ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY", "RAY_AUTH_TOKEN")


def _env_example() -> dict[str, str]:
    pairs = (ln.split("=", 1) for ln in (DOCKER / ".env.example").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_env_example_ships_no_usable_secret():
    env = _env_example()
    for key in SECRETS:
        assert env.get(key, None) == "", f"{key} must ship empty, got {env.get(key)!r}"


def test_compose_refuses_to_start_without_each_secret_and_keeps_auth_on():
    text = (DOCKER / "compose.yaml").read_text()
    for key in SECRETS:  # ${KEY:?...}: compose stops when it is unset or empty
        assert re.search(r"\$\{" + key + r":\?", text), key
    compose = yaml.safe_load(text)
    assert compose["x-cobra-env"]["RAY_AUTH_MODE"] == "token"
    for service in ("ray-head", "ray-worker"):
        env = compose["services"][service]["environment"]
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
        assert "MLFLOW_TRACKING_PASSWORD" in env
    assert compose["services"]["mlflow"]["entrypoint"] == ["/opt/cobra/docker/mlflow-server.sh"]
    assert "--app-name basic-auth" in (DOCKER / "mlflow-server.sh").read_text()


def test_nothing_switches_ray_token_auth_off():
    for path in [*ROOT.glob("tests/*.py"), *ROOT.glob("docker/*"), ROOT / "README.md",
                 *ROOT.glob("docs/*.md"), *ROOT.glob("cobra/**/*.py")]:
        if path.is_file() and path.name != "test_security.py":
            assert "RAY_AUTH_MODE=disabled" not in path.read_text(errors="ignore"), path
            assert '"RAY_AUTH_MODE": "disabled"' not in path.read_text(errors="ignore"), path


@pytest.mark.skipif(shutil.which("docker") is None or subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="needs the docker CLI with the Compose v2 plugin (docker compose config)")
def test_docker_compose_config_names_the_missing_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    shutil.copy(DOCKER / ".env.example", tmp_path / "env")
    result = subprocess.run(["docker", "compose", "--env-file", str(tmp_path / "env"), "-f",
                             str(DOCKER / "compose.yaml"), "config", "-q"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert re.search(r"set \w+ in docker/\.env", result.stderr), result.stderr


# ------------------------------------------------------------------------------------------------
# MLflow with basic auth: docker/mlflow-server.sh (what the compose stack runs), against sqlite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    port = _free_port()
    admin = secrets.token_hex(16)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": admin,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    server = subprocess.Popen(
        ["sh", str(DOCKER / "mlflow-server.sh"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--artifacts-destination", str(tmp / "artifacts")],
        env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "mlflow-server.sh exited"
                assert time.time() < deadline, "mlflow server did not answer /health"
                time.sleep(0.5)
        yield uri, admin
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


@pytest.mark.slow
def test_a_missing_or_wrong_login_stops_the_sweep_before_any_trial(auth_server, monkeypatch):
    uri, admin = auth_server
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(TrackingError, match=r"refused no login \(HTTP 401\); set "
                                            r"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        check_reachable(uri)

    wrong = secrets.token_hex(8)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", wrong)
    with pytest.raises(TrackingError, match=r"refused user 'admin' \(HTTP 401\)") as info:
        check_reachable(uri)
    assert wrong not in str(info.value) and "\n" not in str(info.value)

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin)
    check_reachable(uri)  # the right login passes, and mlflow's client logs in the same way
    exp = MlflowClient(uri).create_experiment("auth-check")
    assert MlflowClient(uri).get_experiment(exp).name == "auth-check"


def test_a_password_in_the_tracking_uri_is_never_echoed(tmp_path, monkeypatch, capsys):
    password = secrets.token_hex(8)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{password}@127.0.0.1:9")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"space:\n  loss.tau: [0.05, 0.1]\nstorage: {tmp_path / 'ray'}\n")
    code, result, err = run_cli(["sweep", str(sweep)], capsys)
    assert code == 2 and result is None, err
    assert err.startswith("error: MLflow server http://alice:***@127.0.0.1:9 is unreachable")
    assert len(err.strip().splitlines()) == 1 and password not in err

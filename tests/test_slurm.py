"""The SLURM drill: a real SLURM (munged, slurmctld and two slurmd, nodes n1 and n2, on this
machine) runs `deploy/slurm/cobra-sweep.sbatch` with `sbatch -N 2`. The sweep's trials run on
both Ray nodes; a second job is `scancel`led mid-sweep, leaves no Ray process behind, and a
third resumes it without re-running the finished trial.

Needs Debian's `slurm-wlm` and `munge` (`apt-get install slurm-wlm munge`); runs as root (the
daemons here run jobs as the user who started them). Two slurmd on one host take a port each."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
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
SBATCH = ROOT / "deploy" / "slurm" / "cobra-sweep.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")
pytestmark = [pytest.mark.slow, pytest.mark.cluster]

if missing := [d for d in DAEMONS if shutil.which(d) is None]:
    pytest.skip(f"SLURM drill skipped: {', '.join(missing)} not installed "
                f"(apt-get install slurm-wlm munge)", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("SLURM drill skipped: slurmd must run as root", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(d: Path) -> str:
    host = socket.gethostname()
    ctld, n1, n2 = free_port(), free_port(), free_port()
    return f"""ClusterName=cobradrill
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
KillWait=30
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={n1} CPUs=1 RealMemory=2000
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={n2} CPUs=1 RealMemory=2000
PartitionName=drill Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
"""


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def slurm(tmp_path):
    """munged, slurmctld and slurmd n1 and n2, all under tmp_path; stopped afterwards."""
    d = tmp_path / "slurm"
    for sub in ("state", "spool"):
        (d / sub).mkdir(parents=True)
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = d / "slurm.conf"
    conf.write_text(slurm_conf(d))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    jobs: list[str] = []
    subprocess.run(["munged", "--force", f"--socket={d}/munge.sock", f"--key-file={key}",
                    f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log",
                    f"--seed-file={d}/munged.seed"], check=True, timeout=30)
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, timeout=30)
        for node in ("n1", "n2"):
            subprocess.run(["slurmd", "-f", str(conf), "-N", node], env=env, check=True,
                           timeout=30)
        wait_for(lambda: subprocess.run(["sinfo", "-h", "-o", "%T %D"], env=env, text=True,
                                        capture_output=True).stdout.split() == ["idle", "2"],
                 60, "two idle SLURM nodes")
        yield {"env": env, "dir": d, "jobs": jobs}
    finally:
        # this controller runs only this test's jobs: cancel them, then stop the daemons
        subprocess.run(["scancel", "--full", "--partition=drill"], env=env, timeout=30,
                       capture_output=True)
        time.sleep(5)
        pids = []
        for pid_file in (*d.glob("slurmd-*.pid"), d / "slurmctld.pid", d / "munged.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pid_file.read_text().split()[0]))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            time.sleep(3)
        for job in jobs:  # each job's Ray temp dir (TMPDIR is not set here)
            shutil.rmtree(f"/tmp/ray-cobra-{job}", ignore_errors=True)


def sweep_file(tmp: Path, data_root: Path, trials: int) -> Path:
    base = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY_OVERRIDES)}
    base.update({"data.root": str(data_root), "train.epochs": 3, "train.max_steps_per_epoch": 3})
    sweep = {"name": "slurm_drill", "base": unflatten(base),
             "space": {"loss.k_cap_pos": list(range(1, trials + 1))},
             "search": {"algorithm": "grid", "seed": 0}, "resources": {"cpu": 1},
             "max_concurrent": 2, "storage": str(tmp / "shared" / "ray"),
             "mlflow": {"experiment": "slurm"}}
    path = tmp / "slurm_drill.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def submit(slurm, env: dict, *args: str) -> str:
    out = subprocess.run(["sbatch", "-N", "2", "--cpus-per-task=1",
                          f"--output={env['JOB_LOG_DIR']}/job-%j.out", str(SBATCH), *args],
                         env=env, cwd=env["JOB_LOG_DIR"], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    job = re.search(r"Submitted batch job (\d+)", out).group(1)
    slurm["jobs"].append(job)
    return job


def job_gone(env: dict, job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True,
                         text=True).stdout.strip()
    return out == ""


def ray_processes(port: int) -> list[str]:
    """Command lines of this job's Ray processes (the GCS and raylets name the head's port)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            except OSError:
                continue
            if ("raylet" in cmd or "gcs_server" in cmd) and f":{port}" in cmd:
                found.append(cmd[:200])
    return found


def left_address(log: str) -> bool:
    """Whether the job's head left its address for later local `ray.init()` calls (which
    would then try to join the dead cluster instead of starting their own)."""
    head = re.search(r"Ray head ([\d.]+:\d+)", log).group(1)
    address_file = Path(os.environ.get("RAY_TMPDIR", os.environ.get("TMPDIR", "/tmp")),
                        "ray", "ray_current_cluster")
    return address_file.is_file() and address_file.read_text().strip() == head


def trials(client: MlflowClient, status: str | None = None) -> list:
    return trial_runs(client, "slurm", status)


def test_a_sweep_runs_on_both_nodes_of_an_allocation_and_a_cancelled_job_resumes(
        slurm, tmp_path, tiny_data_root):
    logs = tmp_path / "jobs"
    logs.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**slurm["env"], "MLFLOW_TRACKING_URI": uri, "COBRA_ROOT": str(ROOT),
           "COBRA_PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "JOB_LOG_DIR": str(logs), "COBRA_ENV_FILE": str(tmp_path / "none.env")}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    client = MlflowClient(uri)

    # 1. a whole sweep in one job: both nodes ran trials
    path = sweep_file(tmp_path, tiny_data_root, trials=2)
    job = submit(slurm, env, str(path))
    wait_for(lambda: job_gone(env, job), 900, f"job {job} to end")
    log = (logs / f"job-{job}.out").read_text()
    assert "sweep driver exited with 0" in log, log[-4000:]
    assert "2 Ray node(s) up" in log and "Ray stopped on every node" in log
    done = trials(client, "FINISHED")
    assert len(done) == 2
    assert len({r.data.tags["ray_node_id"] for r in done}) == 2, "trials ran on one node only"
    port = int(re.search(r"Ray head [\d.]+:(\d+)", log).group(1))
    assert ray_processes(port) == [] and not left_address(log)
    assert env.get("RAY_AUTH_TOKEN") is None and "RAY_AUTH_TOKEN=" not in log

    # 2. a second sweep, cancelled mid-way: nothing of Ray is left, and --resume finishes it
    shutil.rmtree(tmp_path / "shared")
    (tmp_path / "optuna.db").unlink()
    path = sweep_file(tmp_path, tiny_data_root, trials=3)
    path.write_text(path.read_text().replace("slurm_drill", "slurm_cancelled"))
    job = submit(slurm, env, str(path))
    first = wait_for(lambda: [r for r in trials(client, "FINISHED")
                              if r.data.tags.get("cobra.sweep") == "slurm_cancelled"], 900,
                     "a trial of the second sweep to finish")[0]
    subprocess.run(["scancel", job], env=env, check=True, timeout=60)
    wait_for(lambda: job_gone(env, job), 180, f"job {job} to end after scancel")
    log = (logs / f"job-{job}.out").read_text()
    port = int(re.search(r"Ray head [\d.]+:(\d+)", log).group(1))
    wait_for(lambda: not ray_processes(port), 60, "the cancelled job's Ray processes to end")
    assert not left_address(log)

    job = submit(slurm, env, str(path), "--resume")
    wait_for(lambda: job_gone(env, job), 900, f"job {job} (resume) to end")
    log = (logs / f"job-{job}.out").read_text()
    assert "sweep driver exited with 0" in log, log[-4000:]
    assert not left_address(log)
    again = client.get_run(first.info.run_id)
    assert again.info.end_time == first.info.end_time  # the finished trial was not re-run
    assert len(trials(client, "FINISHED")) == 2 + 3

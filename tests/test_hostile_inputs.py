"""Hostile inputs (issue 21): each table is one class of finding, each row one input a probe
tried. The promise under test: bad input gets exit code 2 and one `error:` line naming the
problem (no traceback), nothing is lost or overwritten, no secret is printed, no result is
silently wrong. A later probe extends a table with a row.

Most rows run `launch.py` as a subprocess, as the user does; rows whose command imports torch
run `cli.main` in this process (same code path, seconds cheaper) and say so.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli

from cobra.errors import CobraError, ConfigError, DataError, StageInputError, TrackingError
from cobra.tracking.queries import TrialRecord

LAUNCH = Path(__file__).resolve().parent.parent / "launch.py"
SECRET = "hunter2-s3cret"


def launch(args: list[str], cwd: Path, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    """`python launch.py ARGS` as the user runs it."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(LAUNCH), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_refused(code: int, err: str, *needles: str) -> None:
    """Exit code 2 and exactly one `error:` line on stderr, holding each needle."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------
# Secrets in URIs: never printed, wherever they sit; a login in the URI is a login.

SECRET_URIS = [
    f"http://alice:{SECRET}@127.0.0.1:9",
    f"http://127.0.0.1:9/?token={SECRET}",
    f"https://127.0.0.1:9/?api_key={SECRET}&x=1",
    f"postgresql://bob@127.0.0.1:9/mlflow?password={SECRET}",
    f"sqlite:////nonexistent-dir/mlflow.db?password={SECRET}",
]


@pytest.mark.parametrize("uri", SECRET_URIS)
def test_a_secret_anywhere_in_the_tracking_uri_is_never_printed(uri, tmp_path, capsys,
                                                                monkeypatch):
    """In-process (mlflow loads once for the table); the subprocess rows below show the same
    `report` path as the user runs it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, _, err = run_cli(["report"], capsys)
    assert_refused(code, err, "***")
    assert SECRET not in err


@pytest.mark.parametrize("text", [
    f"could not connect to postgresql://bob@db:5432/x?sslpassword={SECRET}",
    f"GET http://h:5000/api?X-Amz-Signature={SECRET}: 403",
    f"'http://u:{SECRET}@h:5000/health' failed",
])
def test_the_redactor_finds_secrets_in_any_uri_quoted_in_a_message(text):
    from cobra.uris import redact

    assert SECRET not in redact(text) and "***" in redact(text)


class _Handler(http.server.BaseHTTPRequestHandler):
    """A tiny web server: `mlflow` mode answers like MLflow behind basic auth (alice/SECRET);
    `web` mode answers 200 with a web page for every path, as any web server does."""

    mode = "mlflow"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.mode == "web":
            self._answer(200, b"<html>hello</html>", "text/html")
            return
        login = base64.b64encode(f"alice:{SECRET}".encode()).decode()
        if self.path != "/health" and self.headers.get("Authorization") != f"Basic {login}":
            self._answer(401, b"login required", "text/plain")
            return
        self._answer(200, b"OK" if self.path == "/health" else b"{}", "application/json")

    def _answer(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[Callable[[str], str]]:
    """Start a server in `mode`; returns its base URL."""
    servers = []

    def start(mode: str) -> str:
        handler = type("Handler", (_Handler,), {"mode": mode})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


def test_a_login_written_into_the_uri_passes_the_reachability_check(web_server, monkeypatch):
    from cobra.tracking import check_reachable

    host = web_server("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    check_reachable(f"http://alice:{SECRET}@{host}")  # the server takes the URI's login
    with pytest.raises(TrackingError, match="refused user 'alice'") as info:
        check_reachable(f"http://alice:wrong-{SECRET}@{host}")
    assert SECRET not in str(info.value)


def test_a_web_server_that_is_not_mlflow_is_one_line(web_server, tmp_path):
    uri = f"http://alice:{SECRET}@{web_server('web')}"
    done = launch(["report"], tmp_path, {"MLFLOW_TRACKING_URI": uri})
    assert_refused(done.returncode, done.stderr, "not an MLflow tracking server", "alice:***@")
    assert SECRET not in done.stderr + done.stdout


# ------------------------------------------------------------------------------------------------
# Text files: one reader, UTF-8 with or without a BOM; anything else named with its encoding.

LATIN1 = "loss:\n  tau: 0.1  # café\n".encode("latin-1")
BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("content, needles", [
    (LATIN1, ["not UTF-8", "line 2", "save it as UTF-8"]),
    (b"loss:\n  tau: 0.1\ntrain:\n  epochs: 2\nloss:\n  tau: 0.2\n",
     ["sets 'loss' twice", "lines 1 and 5"]),
    (b"loss:\n  tau: 0.1\n  tau: 0.2\n", ["sets 'tau' twice"]),
    (b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
     + b"".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n"
                .encode() for i in range(6)), ["expands to more than"]),
])
def test_a_bad_config_file_is_one_line(content, needles, tmp_path):
    (tmp_path / "bad.yaml").write_bytes(content)
    done = launch(["config", "bad.yaml"], tmp_path)
    assert_refused(done.returncode, done.stderr, "bad.yaml", *needles)


def test_a_config_with_a_bom_is_read(tmp_path):
    (tmp_path / "bom.yaml").write_bytes(BOM + b"loss:\n  tau: 0.25\n")
    done = launch(["config", "bom.yaml"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["loss"]["tau"] == 0.25


def test_a_directory_given_as_config_is_named_as_a_directory(tmp_path):
    done = launch(["config", str(tmp_path)], tmp_path)
    assert_refused(done.returncode, done.stderr, "is a directory")


def _voc_copy(tiny_data_root: Path, tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(tiny_data_root, root)
    return root


def _repeat_first_id(split: Path) -> None:
    """The split's first id four times, as the probe wrote it (a one-image "interval")."""
    first = split.read_text().split()[0]
    split.write_text("\n".join([first] * 4) + "\n")


@pytest.mark.parametrize("write, error, needles", [
    (lambda r: (r / "classes.txt").write_bytes("background\nbo\xeete\n".encode("latin-1")),
     DataError, ["classes.txt", "not UTF-8"]),
    (lambda r: (r / "ImageSets/Segmentation/train.txt").write_bytes(b"\xff\xfe0\x001\x00"),
     DataError, ["train.txt", "not UTF-8"]),
    (lambda r: _repeat_first_id(r / "ImageSets/Segmentation/train.txt"),
     DataError, ["train.txt", "twice", "lines 1 and 2"]),
])
def test_a_bad_text_file_in_a_dataset_is_named(write, error, needles, tiny_data_root, tmp_path):
    from cobra.data.voc import VOCSource

    root = _voc_copy(tiny_data_root, tmp_path)
    write(root)
    with pytest.raises(error) as info:
        VOCSource(root, "train")
    for needle in needles:
        assert needle in str(info.value)


def test_a_classes_file_with_a_bom_keeps_background_first(tiny_data_root, tmp_path):
    from cobra.data.voc import read_class_names

    root = _voc_copy(tiny_data_root, tmp_path)
    (root / "classes.txt").write_bytes(BOM + b"background\nkite\nboat\n")
    assert read_class_names(root) == ["background", "kite", "boat"]


# ------------------------------------------------------------------------------------------------
# Command-line values that used to crash with a traceback (or escape run.dir).


@pytest.mark.parametrize("args, needles", [
    (["train", "--name", "a/b"], ["must be one directory name"]),
    (["train", "--name", "../escaped"], ["must be one directory name"]),
    (["train", "--name", "ABSOLUTE"], ["must be one directory name"]),
    (["train", "--name", "x" * 300], ["300 bytes", "shorter --name"]),
    (["train", "--set", "run.name=../escaped"], ["must be one directory name"]),
    (["train", "cfg.yaml", "--resume", "runs/x"], ["would be ignored"]),
    (["train", "--resume", "runs/x", "--name", "other"], ["would be ignored"]),
    (["report", "--out", "a-file"], ["is a file"]),
    (["report", "--out", "/proc/cobra-report"], ["cannot create report --out"]),
    (["bench", "--bogus"], ["--bogus"]),
])
def test_a_bad_command_line_value_is_one_line(args, needles, tmp_path):
    (tmp_path / "a-file").write_text("keep me")
    (tmp_path / "cfg.yaml").write_text("loss: {tau: 0.1}\n")
    # model.pretrained=false and no data: a name check that passed would go on to fail elsewhere
    absolute = tmp_path / "elsewhere" / "absolute-run"
    done = launch([str(absolute) if a == "ABSOLUTE" else a for a in args], tmp_path)
    assert_refused(done.returncode, done.stderr, *needles)
    assert not (tmp_path.parent / "escaped").exists() and not absolute.exists()
    assert (tmp_path / "a-file").read_text() == "keep me"


@pytest.mark.parametrize("make_cache, needles", [
    (lambda d: (d / "cache").write_text("a file"), ["COBRA_CACHE", "is a file"]),
    (lambda d: None, ["COBRA_CACHE", "/proc"]),
    (lambda d: ((d / "cache").mkdir(), (d / "cache").chmod(0o500)), ["COBRA_CACHE",
                                                                     "not writable"]),
])
def test_an_unusable_cobra_cache_is_one_line(make_cache, needles, tmp_path):
    if os.geteuid() == 0 and "not writable" in needles:
        pytest.skip("root writes anywhere")
    make_cache(tmp_path)
    cache = "/proc/cobra-cache" if "/proc" in needles else str(tmp_path / "cache")
    done = launch(["train", "--set", "train.epochs=0"], tmp_path, {"COBRA_CACHE": cache})
    assert_refused(done.returncode, done.stderr, *needles)


# ------------------------------------------------------------------------------------------------
# Networks and weights: a name in the wrong branch, weights of another network, a damaged cache.


def _tiny(tiny_overrides: list[str], *extra: str) -> list[str]:
    return [arg for o in (*tiny_overrides, *extra) for arg in ("--set", o)]


def _swapped_weights(directory: Path) -> Path:
    """resnet18.safetensors holding deit_tiny's weights and the other way round."""
    import timm
    from safetensors.torch import save_file

    directory.mkdir()
    for file_name, net in (("resnet18", "deit_tiny_patch16_224"),
                           ("deit_tiny_patch16_224", "resnet18")):
        state = timm.create_model(net, pretrained=False).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()},
                  str(directory / f"{file_name}.safetensors"))
    return directory


@pytest.mark.parametrize("extra, needles", [
    (["model.cnn=deit_tiny_patch16_224"], ["model.cnn 'deit_tiny_patch16_224'", "not a CNN"]),
    (["model.vit=resnet18"], ["model.vit 'resnet18'", "not a plain timm ViT"]),
    (["model.pretrained=WEIGHTS"], ["resnet18.safetensors", "does not fit 'resnet18'"]),
])
def test_a_network_or_weights_in_the_wrong_place_is_one_line(extra, needles, tiny_overrides,
                                                            tmp_path, capsys):
    """In-process (torch is loaded already): refused before the first epoch, run removed."""
    if "model.pretrained=WEIGHTS" in extra:
        extra = [f"model.pretrained={_swapped_weights(tmp_path / 'weights')}"]
    code, _, err = run_cli(["train", *_tiny(tiny_overrides, *extra)], capsys)
    assert_refused(code, err, *needles)
    assert not list((tmp_path / "runs").glob("*"))


def test_damaged_cached_weights_are_made_again_not_used(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from cobra import pretrain

    folder = tmp_path / "weights"
    folder.mkdir()
    weights = folder / "net.safetensors"
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(weights))
    # a file cached before records were kept: adopted (recorded) when it reads whole
    assert pretrain._usable(folder, "net", repair=True)
    assert json.loads((folder / "net.safetensors.sha256").read_text())["size"] == \
        weights.stat().st_size
    # overwritten in place with the same size: caught by the hash, removed, named
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\xff\xff\xff\xff"
    weights.write_bytes(bytes(data))
    assert load_file(str(weights))  # still a readable file: only the record can tell
    assert not pretrain._usable(folder, "net", repair=True)
    assert not weights.exists() and "net.safetensors' are damaged" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Data that can be known bad before training.


def test_a_seed_split_without_one_labelled_pixel_is_refused_before_training(
        tiny_data_root, tiny_overrides, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    root = _voc_copy(tiny_data_root, tmp_path)
    for mask in (root / "SegmentationClass").glob("*.png"):
        with Image.open(mask) as img:
            ignored = Image.fromarray(np.full_like(np.asarray(img), 255), mode="P")
            ignored.putpalette(img.getpalette())
        ignored.save(mask)
    code, _, err = run_cli(["train", *_tiny(tiny_overrides, f"data.root={root}")], capsys)
    assert_refused(code, err, "ignore (255)", "data.seed_split")
    assert not list((tmp_path / "runs").glob("*"))


# ------------------------------------------------------------------------------------------------
# Two processes on one run or one sweep: the second is refused with one line.


@pytest.fixture
def lock_holder() -> Iterator[Callable[[Path], int]]:
    """Hold `cobra.locks.hold(path)` in another process (as a running command would)."""
    holders = []

    def hold(path: Path) -> int:
        code = ("import sys; from pathlib import Path; from cobra.locks import hold; "
                f"hold(Path({str(path)!r}), 'x'); print('held', flush=True); sys.stdin.read()")
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(LAUNCH.parent)})
        assert proc.stdout.readline().strip() == "held"
        holders.append(proc)
        return proc.pid

    yield hold
    for proc in holders:
        proc.stdin.close()
        proc.wait(timeout=10)


def _fake_run(tmp_path: Path) -> Path:
    from cobra.config import Config, save_config

    run = tmp_path / "runs" / "busy"
    run.mkdir(parents=True)
    save_config(Config(), run / "config.yaml")
    (run / "metrics.jsonl").write_text('{"event": "epoch", "epoch": 0}\n')
    return run


@pytest.mark.parametrize("args", [
    ["train", "--resume", "RUN"],
    ["stage", "seeds", "--run-dir", "RUN"],
])
def test_a_run_in_use_is_refused(args, lock_holder, tmp_path):
    run = _fake_run(tmp_path)
    pid = lock_holder(run / ".lock")
    done = launch([str(run) if a == "RUN" else a for a in args], tmp_path)
    assert_refused(done.returncode, done.stderr, "in use by another process", f"pid {pid}")
    assert (run / "metrics.jsonl").read_text() == '{"event": "epoch", "epoch": 0}\n'


def _sweep_file(tmp_path: Path, tiny_overrides: list[str], **keys) -> Path:
    overrides = dict(o.split("=", 1) for o in tiny_overrides)
    spec = {"name": "hostile", "base": {}, "space": {"loss.tau": [0.05, 0.1]},
            "search": {"algorithm": "grid"}, "storage": str(tmp_path / "ray"),
            "overrides": {k: yaml.safe_load(v) for k, v in overrides.items()}, **keys}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_second_identical_sweep_is_refused(lock_holder, tiny_overrides, tmp_path, capsys,
                                            monkeypatch):
    """In-process (Ray and torch load once for the file); the first sweep is another process."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ray").mkdir()
    pid = lock_holder(tmp_path / "ray" / ".hostile.lock")
    code, _, err = run_cli(["sweep", str(_sweep_file(tmp_path, tiny_overrides))], capsys)
    assert_refused(code, err, "sweep 'hostile'", "in use by another process", f"pid {pid}")
    assert not (tmp_path / "mlflow.db").exists()  # refused before a parent run was made


# ------------------------------------------------------------------------------------------------
# Sweep files and sweep-level refusals, before Ray starts.


def _gpus() -> int:
    return torch.cuda.device_count()


@pytest.mark.parametrize("keys, needles", [
    ({"space": {"loss.tau": [0.1, 0.1]}}, ["space.loss.tau", "lists 0.1 twice"]),
    ({"space": {"loss.k_cap_pos": [2, 3, 2]}}, ["lists 2 twice"]),
    ({"mlflow": {"experiment": ""}}, ["mlflow.experiment", "is empty"]),
    ({"mlflow": {"experiment": "  "}}, ["mlflow.experiment", "is empty"]),
    ({"resources": {"cpu": 4096}}, ["resources.cpu", "this machine has"]),
    ({"resources": {"gpu": 64}}, ["resources.gpu", "this machine has"]),
])
def test_a_sweep_that_cannot_run_is_refused_before_ray(keys, needles, tiny_overrides, tmp_path,
                                                       capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, _, err = run_cli(["sweep", str(_sweep_file(tmp_path, tiny_overrides, **keys))], capsys)
    assert_refused(code, err, *needles)
    assert not (tmp_path / "mlflow.db").exists()


def test_resuming_a_sweep_the_store_does_not_hold_is_refused(tiny_overrides, tmp_path, capsys,
                                                             monkeypatch):
    """Ray's directory of the sweep is there (a copy, or another working directory's store),
    but the MLflow store this command uses has no such sweep: resuming would start a new one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ray" / "hostile").mkdir(parents=True)
    (tmp_path / "ray" / "hostile" / "tuner.pkl").write_bytes(b"")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    code, _, err = run_cli(["sweep", str(_sweep_file(tmp_path, tiny_overrides)), "--resume"],
                           capsys)
    assert_refused(code, err, "no sweep 'hostile' to resume in MLflow experiment 'cobra'")


def test_a_trials_input_error_ends_the_sweep_as_one_line():
    """A trial whose input is bad reports it (no traceback); the stopper ends every trial and
    the driver finds the message (Ray's own Stopper and Result classes)."""
    from ray.tune import Result

    from cobra.sweep.trainable import INPUT_ERROR, InputErrorStopper
    from cobra.sweep.tuner import first_input_error

    stopper = InputErrorStopper()
    assert not stopper("a", {"epoch": 1}) and not stopper.stop_all()
    assert stopper("b", {INPUT_ERROR: "trial tau=0.1: image 'x.jpg' is empty"})
    assert stopper.stop_all() and stopper("a", {"epoch": 2})
    results = [Result(metrics={"epoch": 1}, checkpoint=None, error=None, path="/a"),
               Result(metrics={INPUT_ERROR: "trial tau=0.1: image 'x.jpg' is empty"},
                      checkpoint=None, error=None, path="/b")]
    assert first_input_error(results) == "trial tau=0.1: image 'x.jpg' is empty"
    assert first_input_error(results[:1]) is None


# ------------------------------------------------------------------------------------------------
# Signals: SIGTERM (Ray, SLURM, Kubernetes, `kill`) ends a run as Ctrl+C does.


def test_sigterm_during_training_marks_the_run_killed_and_keeps_it_resumable(tiny_overrides,
                                                                           tmp_path):
    import signal
    import time

    args = ["train", "--name", "term", "--no-seeds",
            *_tiny(tiny_overrides, "train.epochs=200", "train.diagnostics=false")]
    proc = subprocess.Popen([sys.executable, str(LAUNCH), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    checkpoint = tmp_path / "runs" / "term" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), proc.stderr.read() if proc.poll() is not None else "no epoch"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err
    status = json.loads((tmp_path / "runs" / "term" / "status.json").read_text())
    assert status["status"] == "KILLED"
    assert checkpoint.exists()


# ------------------------------------------------------------------------------------------------
# Results never silently wrong: a report that calls two settings replicates, pixels written over,
# a wide image decoded to one colour.


def _trial(run: str, **params) -> TrialRecord:
    return TrialRecord(run_id=run, run_name=run, status="FINISHED", metrics={"seed_miou": 50.0},
                       params={k: str(v) for k, v in params.items()})


TRIALS = [_trial(f"r{i}", **{"loss.tau": tau, "loss.k_cap_pos": k, "loss.lambda_cam": 0.1,
                             "train.seed": 0})
          for i, (tau, k) in enumerate([(0.1, 2), (0.1, 3), (0.2, 2), (0.2, 3)])]


@pytest.mark.parametrize("rows, cols, needles", [
    ("loss.lambda_cam", None, ["--rows 'loss.lambda_cam' was not swept"]),
    ("loss.tau", None, ["leave out the swept param 'loss.k_cap_pos'", "replicates"]),
    ("loss.taux", None, ["is not a param of this sweep"]),
])
def test_a_report_never_counts_other_settings_as_replicates(rows, cols, needles):
    from cobra.results import sweep_cells

    with pytest.raises(ConfigError) as info:
        sweep_cells(TRIALS, "seed_miou", "max", "s", rows, cols)
    for needle in needles:
        assert needle in str(info.value)
    cells, axes = sweep_cells(TRIALS, "seed_miou", "max", "s", "loss.tau", "loss.k_cap_pos")
    assert axes == ["loss.tau", "loss.k_cap_pos"] and len(cells) == 4


def test_decoded_pixels_written_over_in_place_are_decoded_again(tiny_data_root, tmp_path,
                                                                capsys):
    from cobra.data.decoded_cache import PIXELS, decoded_images
    from cobra.data.voc import VOCSource

    source = VOCSource(tiny_data_root, "val")
    store = decoded_images(source, tmp_path)
    first = source.ids[0]
    original = store.load_image(first)
    pixels = store.folder / PIXELS
    size = pixels.stat().st_size
    with open(pixels, "r+b") as fh:  # same size, other bytes: the header kept, pixels zeroed
        fh.seek(128)
        fh.write(bytes(size - 128))
    assert pixels.stat().st_size == size
    again = decoded_images(source, tmp_path)
    assert (again.load_image(first) == original).all() and original.any()
    assert "changed after it was written" in capsys.readouterr().err


def test_a_16_bit_image_is_not_decoded_to_one_colour(tmp_path):
    import numpy as np
    from PIL import Image

    from cobra.data.source import read_rgb

    ramp = np.linspace(1000, 65000, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    rgb = read_rgb(tmp_path / "wide.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    assert rgb[0, 0, 0] < 10 and rgb[-1, -1, 0] > 245 and len(np.unique(rgb)) > 100


# ------------------------------------------------------------------------------------------------
# Run directories: damaged stage outputs named, a failed `final` not blocking the next.


def test_seeds_scales_beyond_the_pixel_budget_are_refused_before_training(tiny_overrides,
                                                                           tmp_path, capsys):
    code, _, err = run_cli(["train", *_tiny(tiny_overrides, "seeds.scales=[100.0]")], capsys)
    assert_refused(code, err, "at seeds scale 100", "larger than seeds.max_side")
    assert not list((tmp_path / "runs").glob("*"))


def test_a_stage_directory_that_is_a_file_is_named(tmp_path):
    run = _fake_run(tmp_path)
    (run / "seeds").write_text("not a directory")
    done = launch(["stage", "seeds", "--run-dir", str(run)], tmp_path)
    assert_refused(done.returncode, done.stderr, f"'{run / 'seeds'}' is a file")


def test_a_truncated_seed_file_is_named(tmp_path):
    import numpy as np

    from cobra.stages.outputs import read_seed_arrays

    path = tmp_path / "seeds" / "img.npz"
    path.parent.mkdir()
    np.savez(path, keys=np.arange(3), cam_cnn=np.zeros((3, 8, 8), np.float32))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(StageInputError, match=r"seed file '.*img.npz' is damaged.*stage seeds"):
        read_seed_arrays(path)


def test_a_final_run_directory_left_by_a_failed_final_does_not_block_the_next(tmp_path):
    from cobra.layout import new_run

    first = new_run(tmp_path, "final-trial-abcd1234", stamp_if_taken=True)
    second = new_run(tmp_path, "final-trial-abcd1234", stamp_if_taken=True)
    assert first.root.name == "final-trial-abcd1234"
    assert second.root.name.startswith("final-trial-abcd1234-") and first.root.is_dir()
    with pytest.raises(CobraError, match="already exists"):
        new_run(tmp_path, "final-trial-abcd1234")  # `train --name` still refuses


@pytest.mark.cluster
def test_a_sweep_whose_trial_stops_on_bad_data_exits_2_with_one_error_line(tiny_data_root,
                                                                          tiny_overrides,
                                                                          tmp_path):
    """Real Ray (about 40 s, so with the drills: -m cluster). A val image whose header reads
    but whose pixels are cut passes every check before Ray; the first trial stops on it and
    the sweep ends with exit 2 and one `error:` line naming the trial and the file (not exit 0
    with `scored: 0` after a traceback per trial)."""
    root = _voc_copy(tiny_data_root, tmp_path)
    first = (root / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    image = next((root / "JPEGImages").glob(f"{first}.*"))
    image.write_bytes(image.read_bytes()[:120])
    overrides = [o for o in tiny_overrides if not o.startswith("data.root=")]
    sweep = _sweep_file(tmp_path, [*overrides, f"data.root={root}"])
    done = launch(["sweep", str(sweep)], tmp_path,
                  {"COBRA_CACHE": str(tmp_path / "cache"),
                   "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}, timeout=300)
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert "sweep 'hostile' stopped: trial tau" in errors[0] and str(image) in errors[0]
    assert not [ln for ln in done.stdout.splitlines() if ln.startswith("{")]  # no JSON line

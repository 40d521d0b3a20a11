"""The post-training chain on tiny settings through the real CLI: seeds → IR labels → boundary
network → masks → segmentation, its outputs and metrics, skipping complete outputs, and the
bad-input contract of each stage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cobra.errors import ConfigError
from tests.conftest import run_cli, set_args

pytestmark = pytest.mark.slow


@pytest.fixture
def trained_run(tiny_overrides, capsys) -> Path:
    code, result, err = run_cli(["train", "--name", "chain", *set_args(tiny_overrides)], capsys)
    assert code == 0, err
    return Path(result["run_dir"])


def test_masks_and_segmentation_chain(trained_run, capsys):
    run = str(trained_run)
    code, result, err = run_cli(["stage", "ir_labels", "irn", "masks", "segment", "--run-dir", run],
                            capsys)
    assert code == 0, err
    for key in ("ir_label_precision", "ir_label_coverage", "mask_miou", "mask_miou_nocrf",
                "mask_miou_irn", "mask_miou_relative", "seg_miou"):
        assert 0.0 <= result[key] <= 100.0, key
    assert result["mask_miou"] == result["mask_miou_irn"]  # the default rule, both scored
    # the segmentation score with its images and its interval over them, like the others
    assert result["seg_miou_ci_lo"] <= result["seg_miou"] <= result["seg_miou_ci_hi"]
    assert result["seg_num_images"] == 3  # segment.max_images of the tiny settings
    assert result["ir_label_num_images"] == result["mask_num_images"]
    assert (trained_run / "image_counts" / "segment.npz").exists()
    ids = sorted(p.stem for p in (trained_run / "seeds").glob("*.npz"))
    for image_id in ids:
        ir = np.array(Image.open(trained_run / "ir_labels" / f"{image_id}.png"))
        mask = np.array(Image.open(trained_run / "masks" / "png" / f"{image_id}.png"))
        assert ir.shape == mask.shape
        assert set(np.unique(ir)) <= set(range(9)) | {255}
        with np.load(trained_run / "masks" / "rw" / f"{image_id}.npz") as rw:
            assert rw["rw"].shape[0] == rw["keys"].shape[0]
    assert (trained_run / "irn" / "model.pt").exists()
    assert list((trained_run / "segment" / "pred").glob("*.png"))
    assert list((trained_run / "pictures").glob("masks_*.png"))

    # a scoring setting re-scores the saved segmentation network, it does not train a new one
    network = trained_run / "segment" / "model.pt"
    trained_at = network.stat().st_mtime_ns
    code, rescored, err = run_cli(["stage", "segment", "--run-dir", run,
                                   "--set", "segment.flip=true"], capsys)
    assert code == 0, err
    assert network.stat().st_mtime_ns == trained_at and 0.0 <= rescored["seg_miou"] <= 100.0

    # complete outputs are skipped: the boundary network is not retrained
    before = (trained_run / "irn" / "model.pt").stat().st_mtime_ns
    code, again, err = run_cli(["stage", "irn", "masks", "--run-dir", run], capsys)
    assert code == 0, err
    assert (trained_run / "irn" / "model.pt").stat().st_mtime_ns == before
    assert again["mask_miou"] == result["mask_miou"]

    # two worker processes make the same masks and scores as one process
    pngs = {p.name: p.read_bytes() for p in (trained_run / "masks" / "png").glob("*.png")}
    code, pooled, err = run_cli(["stage", "masks", "--run-dir", run, "--force",
                                 "--set", "masks.workers=2"], capsys)
    assert code == 0, err
    assert {k: v for k, v in pooled.items() if k.startswith("mask_")} == {
        k: v for k, v in result.items() if k.startswith("mask_")}
    assert pngs == {p.name: p.read_bytes() for p in (trained_run / "masks" / "png").glob("*.png")}

    # the same IR labels made again (--force) do not retrain the boundary network nor remake
    # the masks: stages key on their input's fingerprint, not its files' times
    written = _written(trained_run)
    code, _, err = run_cli(["stage", "ir_labels", "--run-dir", run, "--force"], capsys)
    assert code == 0, err
    assert _redone(written, _written(trained_run)) == {"ir_labels"}  # the same settings
    code, _, err = run_cli(["stage", "irn", "masks", "--run-dir", run], capsys)
    assert code == 0, err
    assert (trained_run / "irn" / "model.pt").stat().st_mtime_ns == before
    assert _redone(written, _written(trained_run)) == {"ir_labels"}

    # the other mask rule on the same walk: written and headlined, both scores unchanged, and
    # neither the IR labels nor the boundary network are redone for a mask-rule setting
    code, relative, err = run_cli(["stage", "ir_labels", "irn", "masks", "--run-dir", run,
                                   "--set", "masks.rule.name=relative"], capsys)
    assert code == 0, err
    assert (trained_run / "irn" / "model.pt").stat().st_mtime_ns == before
    assert relative["mask_miou"] == relative["mask_miou_relative"] == result["mask_miou_relative"]
    assert relative["mask_miou_irn"] == result["mask_miou_irn"]

    # Table 5 as a command: masks for another fusion mode on the same checkpoint
    code, tran, err = run_cli(["stage", "ir_labels", "irn", "masks", "--run-dir", run,
                           "--set", "seeds.fusion=tran"], capsys)
    assert code == 0, err
    assert "mask_miou" in tran
    # new masks: the segmentation network is trained again, not reused (it was, before)
    code, _, err = run_cli(["stage", "segment", "--run-dir", run, "--set", "seeds.fusion=tran"],
                           capsys)
    assert code == 0, err
    assert network.stat().st_mtime_ns != trained_at


def test_the_authors_recipe_runs_end_to_end(tiny_overrides, capsys):
    code, result, err = run_cli(["train", "--name", "code", *set_args(tiny_overrides),
                                 "--set", "loss.fidelity=code"], capsys)
    assert code == 0, err
    code, result, err = run_cli(["stage", "ir_labels", "irn", "masks", "--run-dir",
                                 result["run_dir"]], capsys)
    assert code == 0, err
    assert result["mask_miou"] == result["mask_miou_relative"]


def test_stage_bad_inputs_exit_2(trained_run, tiny_data_root, tmp_path, capsys):
    run = str(trained_run)
    # a later stage before its input exists names the stage that makes it
    code, _, err = run_cli(["stage", "masks", "--run-dir", run], capsys)
    assert code == 2 and "run stage 'irn'" in err and len(err.strip().splitlines()) == 1

    # seeds missing for some images: name them
    victim = sorted((trained_run / "seeds").glob("*.npz"))[1]
    os.remove(victim)
    code, _, err = run_cli(["stage", "ir_labels", "--run-dir", run], capsys)
    assert code == 2 and victim.stem in err and "run stage 'seeds'" in err

    # a checkpoint that does not match the config
    code, _, err = run_cli(["stage", "seeds", "--run-dir", run, "--force",
                        "--set", "model.embed_dim=32"], capsys)
    assert code == 2 and "does not match" in err and len(err.strip().splitlines()) == 1

    # a run directory made on another dataset (different classes)
    other = tmp_path / "other"
    (other / "JPEGImages").mkdir(parents=True)
    import shutil

    shutil.copytree(tiny_data_root, other, dirs_exist_ok=True)
    names = (other / "classes.txt").read_text().split()
    (other / "classes.txt").write_text("\n".join(names[:5]) + "\n")
    code, _, err = run_cli(["stage", "seeds", "--run-dir", run, "--force",
                        "--set", f"data.root={other}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def _square_with_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_parallel_map_streams_through_one_pool_in_order():
    from cobra.stages.common import POOL_AHEAD_PER_WORKER, parallel_map

    consumed: list[int] = []

    def items():
        for i in range(20):
            consumed.append(i)
            yield i

    results = parallel_map(_square_with_pid, items(), 2, "test", False, total=20)
    first = next(results)
    # items are read lazily: only a bounded window ahead of the first result
    assert len(consumed) == 2 * POOL_AHEAD_PER_WORKER
    rest = list(results)
    assert [r[0] for r in [first, *rest]] == [i * i for i in range(20)]
    pids = {pid for _, pid in [first, *rest]}
    assert os.getpid() not in pids and len(pids) <= 2  # one pool, started once
    # in this process, the same results
    assert [r[0] for r in parallel_map(_square_with_pid, range(20), 1, "test", False)] == \
        [i * i for i in range(20)]


# Where each of the three mask stages writes: IR-label PNGs, the boundary network, mask PNGs.
MASK_STAGE_OUTPUTS = {"ir_labels": "ir_labels/*.png", "irn": "irn/model.pt",
                      "masks": "masks/png/*.png"}


def _written(run: Path) -> dict[str, dict[str, int]]:
    """Each mask stage's output files and the time each was last written."""
    return {stage: {str(p): p.stat().st_mtime_ns for p in run.glob(pattern)}
            for stage, pattern in MASK_STAGE_OUTPUTS.items()}


def _redone(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> set[str]:
    """The stages whose every output was written again (a stage redoes all of its images)."""
    for stage, files in before.items():
        assert files and set(after[stage]) == set(files), stage
    return {stage for stage, files in before.items()
            if all(after[stage][name] != t for name, t in files.items())}


def test_a_setting_redoes_its_own_stage_and_the_stages_after_it(trained_run, capsys):
    """Changing a setting that cannot change an output redoes nothing; a walk setting redoes
    the masks alone; an IR-label CRF setting redoes the IR labels and, keyed on their
    fingerprint, the boundary network and the masks after them."""
    chain = ["stage", "ir_labels", "irn", "masks", "--run-dir", str(trained_run)]
    code, first, err = run_cli(chain, capsys)
    assert code == 0, err
    for override, expected in (("masks.workers=2", set()),
                               ("masks.max_images=4", set()),  # the same images: seeds.max_images=4
                               ("masks.walk.beta=5", {"masks"}),
                               ("masks.ir_labels.crf.gauss_sxy=2.5",
                                {"ir_labels", "irn", "masks"})):
        before = _written(trained_run)
        code, result, err = run_cli([*chain, "--set", override], capsys)
        assert code == 0, err
        assert _redone(before, _written(trained_run)) == expected, override
        if not expected:  # a skipped stage returns its metrics as last recorded
            assert result == first, override
    assert first["irn_loss"] > 0


def _another_value(cfg, key: str):
    """A valid value of `key` whose behaviour differs from what `cfg` gives it."""
    import dataclasses

    from cobra import config

    parent, name = key.rsplit(".", 1)
    field = {f.name: f for f in dataclasses.fields(config.lookup(cfg, parent))}[name]
    now = config.switch(cfg, key) if key in config.FIDELITY_SWITCHES else config.lookup(cfg, key)
    if now is None:  # masks.max_images: all images → the first one
        return 1
    if field.metadata["choices"]:
        return next(c for c in field.metadata["choices"] if c != now)
    if isinstance(now, bool):
        return not now
    if isinstance(now, str):
        return f"{now}_other"
    if isinstance(now, int):
        return now + 1
    for value in (now / 2, now + 1):  # the first within the key's bounds
        try:
            config.with_overrides(cfg, {key: value})
            return value
        except ConfigError:
            continue
    raise AssertionError(f"no other value found for {key}")


def test_every_mask_setting_keys_exactly_the_stage_it_belongs_to(tmp_path):
    """Each masks.* setting is in the fingerprint of its own stage and no other (later stages
    follow through their input's fingerprint), because each stage's fingerprint holds its whole
    sub-config: a setting added to one is keyed without a list to update."""
    from cobra import config
    from cobra.layout import RunLayout
    from cobra.stages import ir_labels, irn, masks

    layout, ids = RunLayout(tmp_path), ["a", "b"]

    def stamps(cfg) -> dict[str, str]:
        return {"ir_labels": ir_labels.stamp(cfg, layout, ids).value,
                "irn": irn.stamp(cfg, layout).value, "masks": masks.stamp(cfg, layout, ids).value}

    stage_of_group = {"ir_labels": "ir_labels", "irn": "irn", "walk": "masks", "rule": "masks"}
    # workers changes no output; max_images selects images, whose ids the stamps hold
    unkeyed = {"masks.workers", "masks.max_images"}
    # the mask CRF runs the IR-label CRF's iterations
    shared = {"masks.ir_labels.crf.iters": {"ir_labels", "masks"}}
    base = config.load_config(None, [])
    before = stamps(base)
    keys = [k for k in config.dotted_keys() if k.startswith("masks.")]
    assert len(keys) > 30
    for key in keys:
        changed = config.with_overrides(base, {key: _another_value(base, key)})
        keyed = {stage for stage, value in stamps(changed).items() if value != before[stage]}
        expected = set() if key in unkeyed else shared.get(
            key, {stage_of_group[key.split(".")[1]]})
        assert keyed == expected, key
    # a paper/code switch set to the behaviour loss.fidelity picks anyway changes nothing
    for key, (paper, _) in config.FIDELITY_SWITCHES.items():
        if key.startswith("masks."):
            assert stamps(config.with_overrides(base, {key: paper})) == before, key

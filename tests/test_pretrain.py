"""Built-in offline pretraining: the corpus, the weight cache and `model.pretrained: builtin`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, set_args
from safetensors.torch import load_file

from cobra import pretrain
from cobra.config import PretrainConfig, load_config
from cobra.data import corpus, synthetic
from cobra.models import build_model

TINY_PRETRAIN = PretrainConfig(image_size=32, num_images=8, num_val=4, epochs=1, batch_size=4)
ROLES = [("cnn", "test_resnet"), ("vit", "test_vit")]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("COBRA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_corpus_draws_no_segmentation_class(monkeypatch):
    names = {n.lower() for n in synthetic.CLASS_NAMES}
    families = {"kite", "boat", "beetle", "sign", "sky", "water", "leaf"}
    for category in corpus.CATEGORY_NAMES:
        assert category not in names
        assert not any(f in category for f in families), category

    def forbidden(*args, **kwargs):
        raise AssertionError("the corpus drew a segmentation object or its context")

    for drawer in ("_kite", "_boat", "_beetle", "_sign", "_sky", "_water", "_leaf"):
        monkeypatch.setattr(synthetic, drawer, forbidden)
    for i in range(12):
        image, labels, categories = corpus.render(0, 0, i, 64)
        assert image.shape == (64, 64, 3) and labels.sum() >= 1
        # every labelled category covers pixels in the category map, and nothing else does
        present = set(np.flatnonzero(labels) + 1)
        assert set(np.unique(categories)) - {0} == present


def test_corpus_is_deterministic_per_seed():
    a, b, c = corpus.render(3, 0, 5, 48), corpus.render(3, 0, 5, 48), corpus.render(4, 0, 5, 48)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_weights_dir_is_keyed_by_every_setting(cache):
    base = pretrain.weights_dir(TINY_PRETRAIN)
    assert base == pretrain.weights_dir(dataclasses.replace(TINY_PRETRAIN))
    for key, value in (("epochs", 2), ("seed", 1), ("lr", 1e-4), ("image_size", 40)):
        assert pretrain.weights_dir(dataclasses.replace(TINY_PRETRAIN, **{key: value})) != base


def test_pretraining_leaves_torch_rng_as_it_found_it(cache):
    # a cold weight cache must not change how the CoBra heads start after it
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    pretrain.ensure(TINY_PRETRAIN, ROLES[:1], progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_pretraining_writes_weights_a_cnn_and_a_vit_load_offline(cache):
    folder, scores = pretrain.ensure(TINY_PRETRAIN, ROLES, progress=False)
    for _, name in ROLES:
        assert (folder / f"{name}.safetensors").is_file()
        assert 0.0 <= scores[name]["top1"] <= 100.0
    cfg = load_config(None, ["model.cnn=test_resnet", "model.vit=test_vit",
                             f"model.pretrained={folder}", "model.embed_dim=8"])
    model = build_model(cfg.model, num_classes=3)
    for branch, (_, name) in ((model.cnn, ROLES[0]), (model.vit, ROLES[1])):
        saved = load_file(str(folder / f"{name}.safetensors"))
        loaded = branch.backbone.state_dict()
        # every backbone weight the branch has came from the file (heads and pos-embed aside)
        shared = [k for k in loaded if k in saved and saved[k].shape == loaded[k].shape]
        assert len(shared) > 0.8 * len(loaded)
        for k in shared:
            assert torch.equal(loaded[k], saved[k]), k


def test_backbones_pretrained_in_parallel_processes_are_cached_alike(cache, monkeypatch):
    torch.set_num_threads(2)  # a core per backbone: the parallel path
    parallel = dataclasses.replace(TINY_PRETRAIN, parallel=True)
    assert pretrain.weights_dir(parallel) == pretrain.weights_dir(
        dataclasses.replace(TINY_PRETRAIN, parallel=False))
    folder, scores = pretrain.ensure(parallel, ROLES, progress=False)
    assert set(scores) == {"test_resnet", "test_vit"}
    for _, name in ROLES:
        assert load_file(str(folder / f"{name}.safetensors"))
        assert scores[name]["steps"] == 2  # 8 images, batch 4, one epoch


def test_a_conv_stem_vit_pretrains_and_loads_offline(cache):
    roles = [("vit", "cobra_vit_c8_micro")]
    folder, _ = pretrain.ensure(TINY_PRETRAIN, roles, progress=False)
    cfg = load_config(None, ["model.branches=vit", "model.vit=cobra_vit_c8_micro",
                             f"model.pretrained={folder}", "model.embed_dim=8"])
    loaded = build_model(cfg.model, num_classes=3).vit.backbone.state_dict()
    saved = load_file(str(folder / "cobra_vit_c8_micro.safetensors"))
    stem = [k for k in loaded if k.startswith("patch_embed.proj.")]
    assert stem and all(torch.equal(loaded[k], saved[k]) for k in stem)


def test_a_second_call_reuses_the_cache(cache, monkeypatch):
    pretrain.ensure(TINY_PRETRAIN, ROLES[:1], progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("cached weights were trained again")

    monkeypatch.setattr(pretrain, "_pretrain_one", no_training)
    folder, scores = pretrain.ensure(TINY_PRETRAIN, ROLES[:1], progress=False)
    assert "test_resnet" in scores


def test_making_the_builtin_weights_is_said_once(cache, capsys):
    # a visible step (issue 22): a line when the weights are made, none when they are cached
    pretrain.ensure(TINY_PRETRAIN, ROLES[:1], progress=False)
    made = capsys.readouterr().err
    pretrain.ensure(TINY_PRETRAIN, ROLES[:1], progress=False)
    assert made.count("making the builtin weights of test_resnet") == 1
    assert "making the builtin weights" not in capsys.readouterr().err


def test_a_killed_pretraining_leaves_no_weights_file(cache, monkeypatch):
    def killed(state, path):
        Path(path).write_bytes(b"half a file")  # what a kill mid-write leaves behind
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain.ensure(TINY_PRETRAIN, ROLES[:1], progress=False)
    folder = pretrain.weights_dir(TINY_PRETRAIN)
    assert not (folder / "test_resnet.safetensors").exists()
    assert not list(folder.glob(".*.tmp"))
    monkeypatch.undo()
    monkeypatch.setenv("COBRA_CACHE", str(cache))
    folder, _ = pretrain.ensure(TINY_PRETRAIN, ROLES[:1], progress=False)
    assert load_file(str(folder / "test_resnet.safetensors"))


@pytest.mark.parametrize(("key", "name"), [("model.vit", "resnet18"),
                                           ("model.cnn", "deit_tiny_patch16_224"),
                                           ("model.cnn", "not_a_model")])
def test_an_unsupported_backbone_for_builtin_exits_2_with_one_line(cache, capsys, key, name):
    code, result, err = run_cli(["pretrain", *set_args([f"{key}={name}"])], capsys)
    assert code == 2 and result is None
    assert err.count("\n") == 1 and name in err and "Traceback" not in err


def test_builtin_trains_end_to_end_and_keeps_the_setting(cache, tiny_overrides, capsys):
    overrides = [*tiny_overrides, "model.cnn=test_resnet", "model.vit=test_vit",
                 "model.pretrained=builtin", *(f"pretrain.{f.name}={getattr(TINY_PRETRAIN, f.name)}"
                                               for f in dataclasses.fields(TINY_PRETRAIN))]
    code, result, err = run_cli(["train", "--no-seeds", *set_args(overrides)], capsys)
    assert code == 0, err
    assert "making the builtin weights of test_resnet, test_vit" in err
    folder = pretrain.weights_dir(TINY_PRETRAIN)
    assert (folder / "test_resnet.safetensors").is_file()
    assert (folder / "test_vit.safetensors").is_file()
    saved = load_config(Path(result["run_dir"]) / "config.yaml")
    assert saved.model.pretrained == "builtin"  # the intent is recorded, not a cache path

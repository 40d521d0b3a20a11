"""Hardening: a full disk mid-checkpoint leaves the previous checkpoint intact and no temp file;
checkpoints load with weights_only; configs are read with safe_load."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from cobra.checkpoint import load_checkpoint, save_checkpoint
from cobra.config import ConfigError, load_config


class TinyNet(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((3,), value))


def test_disk_full_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = load_config(None)
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, model=TinyNet(1.0), cfg=cfg, epoch=0)

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])  # half the bytes land, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r": FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model=TinyNet(2.0), cfg=cfg, epoch=1)
    monkeypatch.undo()

    state = load_checkpoint(path)
    assert state["epoch"] == 0
    assert torch.equal(state["model"]["weight"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def test_a_pickle_payload_is_refused_not_executed(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Boom()}))
    from cobra.errors import StageInputError

    with pytest.raises(StageInputError, match="cannot be read"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_yaml_tags_that_construct_objects_are_rejected(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)

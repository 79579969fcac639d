"""Pretraining runs once per config: the pretrain node returns a checkpoint kept on disk
for its config instead of training, and the dataset keeps every config's checkpoint."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

from cardiac_pipeline.model.pretrain import config_hash, read_checkpoint_meta
from cardiac_pipeline.pipelines.pretrain import nodes
from cardiac_pipeline.pipelines.pretrain.datasets import (
    PretrainedBackboneArchive,
    PretrainedBackboneDataset,
)
from tests.conftest import conf_base_parameters
from tests.processes import SPAWN, wait_until

PREPROCESSING = conf_base_parameters()["preprocessing"]
BASE = {**conf_base_parameters()["pretrain"], "arch": "toy"}


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    pd.DataFrame({"FileName": ["a", "b"], "Report": ["EF 50%.", "EF 30%."]}).to_csv(
        tmp_path / "Reports.csv", index=False
    )
    return pd.DataFrame({"FileName": ["a", "b"]}), tmp_path


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    made: list[int] = []

    def fake_pretraining(arch, store, table, training, device, progress):
        made.append(int(training["epochs"]))
        torch.manual_seed(int(training["epochs"]))
        return torch.nn.Linear(2, 2), pd.DataFrame({"epoch": [1], "loss": [1.0]})

    monkeypatch.setattr(nodes, "_run_pretraining", fake_pretraining)
    return made


def _pretrain(corpus, current: Path, archive: Path | None, epochs: int) -> None:
    """One run of the node and its two datasets, as Kedro does."""
    index, raw = corpus
    params = {**BASE, "epochs": epochs, "seed": 0}
    available = PretrainedBackboneArchive(str(current), archive and str(archive)).load()
    result = nodes.pretrain_backbone(None, index, raw, params, PREPROCESSING, available)
    PretrainedBackboneDataset(str(current), archive and str(archive)).save(result)


def _weights(path: Path) -> torch.Tensor:
    return torch.load(path, weights_only=True)["state_dict"]["weight"]


def test_a_config_pretrained_before_is_restored_not_pretrained_again(
    tmp_path: Path, corpus, calls
) -> None:
    current, archive = tmp_path / "out" / "pretrained_backbone.pt", tmp_path / "archive"
    _pretrain(corpus, current, archive, 20)
    full = _weights(current)
    _pretrain(corpus, current, archive, 4)  # another config: pretrains, replaces the file
    assert calls == [20, 4]
    assert not torch.equal(_weights(current), full)
    _pretrain(corpus, current, archive, 20)  # back to the first: restored from the archive
    assert calls == [20, 4]
    assert torch.equal(_weights(current), full)
    assert read_checkpoint_meta(current)["config"]["epochs"] == 20
    _pretrain(corpus, current, archive, 20)  # current already: nothing to do
    assert calls == [20, 4]
    assert sorted(p.name for p in archive.iterdir()) == sorted(
        f"{read_checkpoint_meta(p)['config_hash']}.pt" for p in archive.iterdir()
    )
    assert len(list(archive.iterdir())) == 2


def test_a_checkpoint_from_before_the_archive_is_kept_when_replaced(
    tmp_path: Path, corpus, calls
) -> None:
    current = tmp_path / "out" / "pretrained_backbone.pt"
    _pretrain(corpus, current, None, 20)  # no archive yet
    old = _weights(current)
    _pretrain(corpus, current, tmp_path / "archive", 4)
    _pretrain(corpus, current, tmp_path / "archive", 20)
    assert calls == [20, 4]
    assert torch.equal(_weights(current), old)


def test_without_an_archive_a_changed_config_pretrains_again(tmp_path: Path, corpus, calls) -> None:
    for epochs in (20, 4, 20):
        _pretrain(corpus, tmp_path / "pretrained_backbone.pt", None, epochs)
    assert calls == [20, 4, 20]


def test_spelling_out_the_neutral_defaults_keeps_the_config_and_its_checkpoint() -> None:
    pretrain = {**BASE, "epochs": 20, "batch_size": 32}

    def config(**extra) -> dict:
        return nodes.pretraining_config({**pretrain, **extra}, PREPROCESSING, pairs=2)

    neutral = config(warmup_epochs=0.0, lr_schedule="constant")
    assert "warmup_epochs" not in neutral and "lr_schedule" not in neutral
    assert config(warmup_epochs=0.5)["warmup_epochs"] == 0.5
    assert config(lr_schedule="cosine")["lr_schedule"] == "cosine"
    assert config_hash({"arch": "toy", **config()}) != config_hash(
        {"arch": "toy", **config(epochs=4)}
    )


def keep_when_told(current: Path, archive: Path, wanted: str, held, go) -> None:
    """Another run pretraining ``wanted``: holds its build lock until ``go``, then keeps it."""
    checkpoints = PretrainedBackboneArchive(str(current), str(archive)).load()
    with checkpoints.building(wanted):
        held.set()
        go.wait(120)
        state = {"weight": torch.full((2, 2), 7.0)}
        checkpoints.keep({"arch": "toy", "state_dict": state, "meta": {"config_hash": wanted}})


def test_a_run_meeting_another_pretraining_its_config_waits_and_restores_that_checkpoint(
    tmp_path: Path, corpus, calls, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("fcntl")
    current, archive = tmp_path / "out" / "pretrained_backbone.pt", tmp_path / "archive"
    params = {**BASE, "epochs": 20, "seed": 0}
    wanted = config_hash({"arch": "toy", **nodes.pretraining_config(params, PREPROCESSING, 2)})
    held, go = SPAWN.Event(), SPAWN.Event()
    other = SPAWN.Process(target=keep_when_told, args=(current, archive, wanted, held, go))
    other.start()
    caplog.set_level(logging.INFO)
    try:
        assert held.wait(120), "the other run never started pretraining"
        with ThreadPoolExecutor(1) as pool:
            mine = pool.submit(_pretrain, corpus, current, archive, 20)
            wait_until(lambda: "being built by" in caplog.text, "this run waiting")
            go.set()
            mine.result(timeout=120)
    finally:
        go.set()
        other.join(120)
    assert calls == []  # not pretrained twice: the other run's checkpoint restored
    assert torch.equal(_weights(current), torch.full((2, 2), 7.0))
    assert "kept by another run meanwhile; reusing" in caplog.text

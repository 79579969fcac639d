"""The pretrained checkpoint dataset pretrains once per config and keeps every config's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from cardiac_pipeline.model.pretrain import read_checkpoint_meta
from cardiac_pipeline.pipelines.pretrain.datasets import PretrainedBackboneDataset, PretrainRequest


def _request(epochs: int, calls: list[int]) -> PretrainRequest:
    def run():
        calls.append(epochs)
        torch.manual_seed(epochs)
        return torch.nn.Linear(2, 2), pd.DataFrame({"epoch": [1], "loss": [float(epochs)]})

    return PretrainRequest(arch="toy", config={"epochs": epochs}, run=run)


def _weights(path: Path) -> torch.Tensor:
    return torch.load(path, weights_only=True)["state_dict"]["weight"]


def test_a_config_pretrained_before_is_restored_not_pretrained_again(tmp_path: Path) -> None:
    current = tmp_path / "pretrained_backbone.pt"
    dataset = PretrainedBackboneDataset(str(current), archive_dir=str(tmp_path / "archive"))
    calls: list[int] = []
    dataset.save(_request(20, calls))
    full = _weights(current)
    dataset.save(_request(4, calls))  # another config: pretrains, replaces the current file
    assert calls == [20, 4]
    assert not torch.equal(_weights(current), full)
    dataset.save(_request(20, calls))  # back to the first: restored from the archive
    assert calls == [20, 4]
    assert torch.equal(_weights(current), full)
    assert read_checkpoint_meta(current)["config"] == {"epochs": 20}
    dataset.save(_request(20, calls))  # current already: nothing to do
    assert calls == [20, 4]
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == sorted(
        f"{read_checkpoint_meta(p)['config_hash']}.pt" for p in (tmp_path / "archive").iterdir()
    )
    assert len(list((tmp_path / "archive").iterdir())) == 2


def test_a_checkpoint_from_before_the_archive_is_kept_when_replaced(tmp_path: Path) -> None:
    current = tmp_path / "pretrained_backbone.pt"
    calls: list[int] = []
    PretrainedBackboneDataset(str(current)).save(_request(20, calls))  # no archive yet
    old = _weights(current)
    dataset = PretrainedBackboneDataset(str(current), archive_dir=str(tmp_path / "archive"))
    dataset.save(_request(4, calls))
    dataset.save(_request(20, calls))
    assert calls == [20, 4]
    assert torch.equal(_weights(current), old)


def test_without_an_archive_a_changed_config_pretrains_again(tmp_path: Path) -> None:
    dataset = PretrainedBackboneDataset(str(tmp_path / "pretrained_backbone.pt"))
    calls: list[int] = []
    for epochs in (20, 4, 20):
        dataset.save(_request(epochs, calls))
    assert calls == [20, 4, 20]


def test_spelling_out_the_neutral_defaults_keeps_the_config_and_its_checkpoint(
    tmp_path: Path,
) -> None:
    from cardiac_pipeline.pipelines.pretrain.nodes import request_pretraining

    pd.DataFrame({"FileName": ["a", "b"], "Report": ["EF 50%.", "EF 30%."]}).to_csv(
        tmp_path / "Reports.csv", index=False
    )
    index = pd.DataFrame({"FileName": ["a", "b"]})
    pretrain = {"arch": "toy", "corpus": {"n_train": 2}, "epochs": 20, "batch_size": 32}

    def config(**extra) -> dict:
        return request_pretraining(
            None, index, tmp_path, {**pretrain, **extra}, {"size": 112}
        ).config

    assert config(warmup_epochs=0, lr_schedule="constant") == config()
    assert config(warmup_epochs=0.5)["warmup_epochs"] == 0.5
    assert config(lr_schedule="cosine")["lr_schedule"] == "cosine"

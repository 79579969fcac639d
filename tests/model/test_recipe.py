"""The recipe's run key and cache ids: what makes a stored run or embedding reusable."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardiac_pipeline.model.recipe import run_key, weights_fingerprint
from tests.conftest import base_recipe


def _backbone(pretrained: str | None, name: str = "echo-vit-tiny", **more: object):
    return base_recipe(backbone={"name": name, "pretrained": pretrained, **more}).backbone


def test_run_key_follows_the_weights_file_not_only_its_path(tmp_path: Path) -> None:
    weights = tmp_path / "pretrained_backbone.pt"
    arch = _backbone(str(weights))
    assert weights_fingerprint(arch) is None  # not written yet
    weights.write_bytes(b"first pretraining")
    first = weights_fingerprint(arch)
    weights.write_bytes(b"second pretraining")  # re-pretrained in place: same path
    second = weights_fingerprint(arch)
    assert first and second and first != second
    assert run_key(arch, first) != run_key(arch, second)
    assert weights_fingerprint(_backbone(None)) is None


def test_probe_embedding_cache_id_follows_weight_content_not_file_time(tmp_path: Path) -> None:
    import os

    from cardiac_pipeline.model.benchmark import probe_model_id

    weights = tmp_path / "pretrained_backbone.pt"
    weights.write_bytes(b"first pretraining")
    backbone = _backbone(str(weights))
    first = probe_model_id(backbone)
    os.utime(weights, ns=(1, 1))  # touched or copied: same weights, same cache entry
    assert probe_model_id(backbone) == first
    weights.write_bytes(b"second pretraining")  # re-pretrained in place
    assert probe_model_id(backbone) != first
    assert probe_model_id(backbone).startswith("echo-vit-tiny-")
    # sources that are not files are named in full: a shared prefix is no shared entry
    first_dir = _backbone("local-dir:/models/echo-clip-site-a", "echo-clip")
    second_dir = _backbone("local-dir:/models/echo-clip-site-b", "echo-clip")
    assert probe_model_id(first_dir) != probe_model_id(second_dir)


def test_only_hub_and_local_dir_names_bring_their_own_weights() -> None:
    from cardiac_pipeline.model.backbone import brings_own_weights

    assert brings_own_weights("hf-hub:mkaichristensen/echo-clip")
    assert brings_own_weights("local-dir:/models/echo-clip")
    assert not brings_own_weights("echo-convnext-tiny")
    assert not brings_own_weights(None)
    assert not brings_own_weights("C:/weights/backbone.pt")  # a drive letter is no schema


def test_predict_on_table_batches_as_many_videos_as_evaluation_asks(monkeypatch) -> None:
    import pandas as pd

    from cardiac_pipeline.model import recipe

    seen: list[int] = []

    def fake_predict(model, dataset, *, device, batch_size, progress):
        seen.append(batch_size)
        return pd.DataFrame({"FileName": [], "EF_true": [], "EF_pred": []}), {}

    monkeypatch.setattr(recipe, "EchoClipDataset", lambda *args, **kwargs: None)
    monkeypatch.setattr(recipe, "predict_videos", fake_predict)
    checkpoint = {"clips": {"frames": 4, "period": 2}}
    for batch_size in (1, 4):
        evaluation = base_recipe(evaluation={"n_clips": 1, "batch_size": batch_size}).evaluation
        recipe.predict_on_table(None, pd.DataFrame(), checkpoint, evaluation, model=object())
    assert seen == [1, 4]  # one video per forward pass; the R(2+1)D baseline asks 4


@pytest.fixture
def fit_configs(monkeypatch) -> list:
    """The TrainConfig of every ``recipe.train_on_split`` call; no data read, nothing trained."""
    import pandas as pd

    from cardiac_pipeline.model import recipe

    configs: list = []

    def fake_fit(model, train_set, val_set, config, work_dir, **kwargs):
        configs.append(config)
        return recipe.TrainResult(1, 1.0, pd.DataFrame(), work_dir, work_dir)

    monkeypatch.setattr(recipe, "EchoClipDataset", lambda *args, **kwargs: None)
    monkeypatch.setattr(recipe, "fit", fake_fit)
    return configs


TWO_VIDEO_SPLIT = {"FileName": ["a", "b"], "EF": [40.0, 60.0], "role": ["train", "val"]}


def test_only_a_pretrained_start_competes_as_epoch_zero(fit_configs, tmp_path: Path) -> None:
    from types import SimpleNamespace

    import pandas as pd
    import torch

    from cardiac_pipeline.model import recipe

    split = pd.DataFrame(TWO_VIDEO_SPLIT)
    weights = tmp_path / "pretrained_backbone.pt"
    weights.write_bytes(b"pretrained")
    starts = {
        "pretrained": {"name": "echo-vit-tiny", "pretrained": str(weights)},
        "echoclip": {"name": "local-dir:/models/echo-clip", "pretrained": None},
        "random": {"name": "echo-vit-tiny", "pretrained": None},
        "unloaded": {"name": "local-dir:/models/echo-clip", "load_weights": False},
    }
    training = {"select_start": True, "work_dir": str(tmp_path), "adaptation": "full"}
    for backbone in starts.values():
        recipe.train_on_split(
            SimpleNamespace(root=tmp_path),
            split,
            base_recipe(backbone=backbone, training={**training, "prior_correction": "none"}),
            model=torch.nn.Linear(1, 1),
        )
    # EchoCLIP and our checkpoint compete with their adaptation; random weights do not
    assert [config.select_start for config in fit_configs] == [True, True, False, False]


def test_recipe_sections_reject_unknown_and_retired_keys() -> None:
    with pytest.raises(ValueError, match=r"'test.cardiac_clip'.*'pooling_type'.*'pooling'"):
        base_recipe(cardiac_clip={"pooling_type": "mean"})
    with pytest.raises(ValueError, match="'eval_batch_size' is now evaluation.batch_size"):
        base_recipe(training={"eval_batch_size": 4})
    with pytest.raises(ValueError, match="clips"):
        from cardiac_pipeline import config

        config.section("clips", {"frames": 4, "periode": 2})


def test_vals_batch_size_comes_from_evaluation(fit_configs, tmp_path: Path) -> None:
    from types import SimpleNamespace

    import pandas as pd
    import torch

    from cardiac_pipeline.model import recipe

    split = pd.DataFrame(TWO_VIDEO_SPLIT)
    for batch_size in (1, 4):
        recipe.train_on_split(
            SimpleNamespace(root=tmp_path),
            split,
            base_recipe(
                backbone={"name": "echo-vit-tiny", "pretrained": None},
                training={"work_dir": str(tmp_path), "prior_correction": "none"},
                evaluation={"batch_size": batch_size},
            ),
            model=torch.nn.Linear(1, 1),
        )
    assert [config.eval_batch_size for config in fit_configs] == [1, 4]

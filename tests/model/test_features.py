"""Frame-feature cache and adaptation on it, on a tiny synthetic target site."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DatasetError

from cardiac_pipeline import config
from cardiac_pipeline.echo.clips import effective_period
from cardiac_pipeline.echo.clipstore import ClipStore, build_clip_store
from cardiac_pipeline.echo.echonet import build_video_index
from cardiac_pipeline.echo.synthetic import generate_dataset
from cardiac_pipeline.errors import UserError
from cardiac_pipeline.io import LOCK_FILE
from cardiac_pipeline.model import recipe
from cardiac_pipeline.model.backbone import create_backbone
from cardiac_pipeline.model.features import (
    CachedCardiacCLIP,
    FeatureClipDataset,
    FeatureStore,
    build_feature_store,
    feature_precision,
    feature_store_key,
    key_digest,
    prior_offset,
)
from cardiac_pipeline.model.mfl import AttentionPool, TemporalPool, clip_spread
from cardiac_pipeline.model.pretrain import pretrain_clip, zero_shot_predict
from cardiac_pipeline.nn.encoders import create_encoder
from tests.conftest import INGESTION, base_recipe, conf_base
from tests.processes import another_process_holding, wait_until

ARCH = "echo-convnext-tiny"
CLIPS = {"frames": 4, "period": 2, "target_fps": None, "pad_mode": "zero", "val_clips": 1}
CLIPS = {**CLIPS, "augment_pad": 0}
EVALUATION = {"n_clips": 1, "device": "cpu", "batch_size": 1}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClipStore, pd.DataFrame, Path]:
    """12 short target-site videos in a clip store, a backbone pretrained on their reports."""
    root = tmp_path_factory.mktemp("site")
    generate_dataset(
        root / "echonet",
        n_train=12,
        n_val=0,
        n_test=0,
        seed=5,
        site="target",
        workers=1,
        progress=False,
        site_overrides={"frames_range": (24, 36)},
    )
    index, _ = build_video_index(root / "echonet", **{**INGESTION, "min_frames": 8}, progress=False)
    build_clip_store(index, root / "store", size=112, workers=1, progress=False)
    store = ClipStore(root / "store")
    reports = pd.read_csv(root / "echonet" / "Reports.csv")
    table = index[["FileName", "EF"]].merge(reports, on="FileName")
    backbone = create_backbone(ARCH, seed=0)
    model, _ = pretrain_clip(
        backbone, store, table, epochs=2, batch_size=4, frames=2, period=4, seed=0, progress=False
    )
    path = root / "pretrained.pt"
    from cardiac_pipeline.model.pretrain import save_pretrained_checkpoint

    save_pretrained_checkpoint(model, ARCH, path, {})
    return store, table[["FileName", "EF"]], path


def _recipe(path: Path, *, training: dict | None = None, **cardiac_clip: object):
    return base_recipe(
        backbone={"name": ARCH, "pretrained": str(path)},
        cardiac_clip={"scales": [1, 2], "prompt_set": "values", **cardiac_clip},
        clips=CLIPS,
        training=training or {},
        evaluation=EVALUATION,
    )


def _arch(path: Path, **cardiac_clip: object) -> recipe.Arch:
    typed = _recipe(path, **cardiac_clip)
    return recipe.Arch(backbone=typed.backbone, cardiac_clip=typed.cardiac_clip, adapters=None)


def _store(site, tmp_path: Path, model=None) -> tuple[FeatureStore, object]:
    store, table, path = site
    model = model or recipe.build_cardiac_clip(_arch(path), seed=0)
    spec = recipe.clip_spec(CLIPS)
    key = feature_store_key(model, store, spec, ARCH)
    root = tmp_path / key_digest(key)
    build_feature_store(model, store, root, table["FileName"], spec, key=key, progress=False)
    return FeatureStore(root), model


def test_cached_features_equal_the_trunk_recomputed(site, tmp_path: Path) -> None:
    store, table, _ = site
    features, model = _store(site, tmp_path)
    spec = recipe.clip_spec(CLIPS)
    for name in table["FileName"][:3]:
        video = store.load(name)
        step = effective_period(spec, store.entry(name).get("fps"))
        with torch.no_grad():
            expected = model.eval().pooled_features(torch.from_numpy(video[::step].copy())[None])[0]
        stored = torch.from_numpy(np.asarray(features.load(name), dtype=np.float32))
        assert stored.shape == (len(video[::step]), 2, model.image_encoder.num_features)
        torch.testing.assert_close(stored.flatten(1), expected, rtol=1e-2, atol=1e-2)


def test_bf16_store_is_its_own_and_close_to_fp32(site, tmp_path: Path) -> None:
    store, table, path = site
    fp32, model = _store(site, tmp_path / "fp32")
    spec = recipe.clip_spec(CLIPS)
    key = feature_store_key(model, store, spec, ARCH, "bf16")
    assert key_digest(key) != key_digest(feature_store_key(model, store, spec, ARCH))
    root = tmp_path / "bf16" / key_digest(key)
    names = table["FileName"][:2]
    build_feature_store(model, store, root, names, spec, key=key, progress=False)
    bf16 = FeatureStore(root)
    for name in names:
        a, b = (np.asarray(s.load(name), dtype=np.float32) for s in (fp32, bf16))
        assert not np.array_equal(a, b)  # the build did run in bf16
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.05


def test_feature_precision_follows_amp_and_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from cardiac_pipeline.model import features

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert feature_precision("off", cuda) == "fp32"
    assert feature_precision("bf16", cpu) == "bf16"
    assert feature_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(features, "_cpu_has_amx", lambda: False)
    assert feature_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(features, "_cpu_has_amx", lambda: True)
    assert feature_precision("auto", cpu) == "bf16"


def test_store_is_reused_when_weights_are_unchanged_and_rebuilt_when_they_change(
    site, tmp_path: Path
) -> None:
    store, table, path = site
    spec = recipe.clip_spec(CLIPS)
    model = recipe.build_cardiac_clip(_arch(path), seed=0)
    key = feature_store_key(model, store, spec, ARCH)
    root = tmp_path / key_digest(key)
    names = table["FileName"]
    assert build_feature_store(model, store, root, names, spec, key=key, progress=False).attrs[
        "encoded"
    ] == len(names)
    again = recipe.build_cardiac_clip(_arch(path), seed=1)  # other seed, same trunk weights
    assert feature_store_key(again, store, spec, ARCH) == key
    assert (
        build_feature_store(again, store, root, names, spec, key=key, progress=False).attrs[
            "encoded"
        ]
        == 0
    )
    with torch.no_grad():  # new weights: a new key, so a new store with every video encoded
        next(again.image_encoder.trunk.parameters()).add_(0.1)
    changed = feature_store_key(again, store, spec, ARCH)
    assert key_digest(changed) != key_digest(key)
    assert (
        feature_store_key(again, store, recipe.clip_spec({**CLIPS, "period": 3}), ARCH) != changed
    )


def test_complete_store_is_read_and_a_build_waits_while_another_process_builds(
    site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("fcntl")
    store, table, path = site
    spec = recipe.clip_spec(CLIPS)
    model = recipe.build_cardiac_clip(_arch(path), seed=0)
    key = feature_store_key(model, store, spec, ARCH)
    root = tmp_path / key_digest(key)
    names = list(table["FileName"])

    def build(videos):
        return build_feature_store(model, store, root, videos, spec, key=key, progress=False)

    build(names[:2])
    caplog.set_level(logging.INFO, logger="cardiac_pipeline.io")
    with another_process_holding(root / LOCK_FILE) as (_, release), ThreadPoolExecutor(1) as pool:
        assert pool.submit(build, names[:2]).result(timeout=120).attrs["encoded"] == 0
        assert "being built" not in caplog.text  # complete: read without the lock
        waiting = pool.submit(build, names[:3])  # a video more: waits for the lock
        wait_until(lambda: "being built by" in caplog.text, "the build waiting")
        release.set()
        assert waiting.result(timeout=120).attrs["encoded"] == 1


def test_the_kedro_dataset_opens_the_store_of_the_last_build(site, tmp_path: Path) -> None:
    from cardiac_pipeline.datasets import FrameFeatureStoreDataset
    from cardiac_pipeline.model.features import FeatureStore, build_feature_store, key_digest

    store, table, path = site
    dataset = FrameFeatureStoreDataset(str(tmp_path / "features"))
    dataset.save({})
    assert dataset.load() is None  # full adaptation: nothing built, nothing to open
    model = recipe.build_cardiac_clip(_arch(path), seed=0)
    spec = recipe.clip_spec(CLIPS)
    key = feature_store_key(model, store, spec, ARCH)
    names = table["FileName"].tolist()[:2]
    root = tmp_path / "features" / key_digest(key)
    build_feature_store(model, store, root, names, spec, key=key, progress=False)
    dataset.save(FeatureStore(root))
    loaded = dataset.load()
    assert loaded.key == key and all(name in loaded for name in names)
    with pytest.raises(DatasetError, match="must be in"):  # the dataset only records stores
        dataset.save(FeatureStore(tmp_path))


def _split(table: pd.DataFrame) -> pd.DataFrame:
    roles = ["train"] * 8 + ["val"] * (len(table) - 8)
    return table.assign(role=roles, k=1, seed=0)


def _training(tmp_path: Path, **cached: object) -> dict:
    plain = {"warmup_steps": 0, "max_batches_per_epoch": None, "select_epoch": "best"}
    return {
        "adaptation": "cached",
        "prior_correction": "val",
        "cached": {
            "epochs": 12,
            "batch_size": 4,
            "lrs": {"mfl": 1e-2, "head": 1e-2},
            "checkpoint_every": 1,
            **plain,
            **cached,
        },
        "select_start": True,
        "work_dir": str(tmp_path / "runs"),
    }


def _train_cached(site, tmp_path: Path, **cached: object) -> tuple:
    """``(split, features, checkpoint, result)`` of a cached-mode model on the site."""
    store, table, path = site
    features, _ = _store(site, tmp_path)
    split = _split(table)
    checkpoint, result = recipe.train_on_split(
        store,
        split,
        _recipe(path, training=_training(tmp_path, **cached)),
        features=features,
        progress=False,
    )
    return split, features, checkpoint, result


def test_cached_mode_loss_falls_and_the_checkpoint_predicts_from_pixels(
    site, tmp_path: Path
) -> None:
    store, _, path = site
    split, features, checkpoint, result = _train_cached(site, tmp_path)
    loss = result.history["train_loss"].to_numpy()
    assert loss[-5:].mean() < loss[:3].mean()
    assert checkpoint["adaptation"] == "cached"
    assert checkpoint["arch"]["cardiac_clip"]["learn_prompts"] is True
    val = split[split["role"] == "val"]
    evaluation = _recipe(path).evaluation
    from_features, _ = recipe.predict_on_table(
        store, val, checkpoint, evaluation, features=features, progress=False
    )
    from_pixels, _ = recipe.predict_on_table(store, val, checkpoint, evaluation, progress=False)
    # the same model either way (clip starts move to the feature grid: close, not equal)
    assert np.abs(from_features["EF_pred"] - from_pixels["EF_pred"]).max() < 3.0


def test_calibration_stores_the_interval_and_a_description_of_its_videos(
    site, tmp_path: Path
) -> None:
    from cardiac_pipeline.echo.ood import score_videos
    from cardiac_pipeline.model.ood import embedding_matrix

    store, _, path = site
    split, features, checkpoint, _ = _train_cached(site, tmp_path, epochs=2)
    evaluation = _recipe(path).evaluation
    recipe.calibrate_interval(checkpoint, store, split, evaluation, features=features)
    torch.save(checkpoint, tmp_path / "model.pt")
    stored = recipe.load_checkpoint(tmp_path / "model.pt")  # weights_only: tensors, numbers
    described = stored["ood"]
    val = split[split["role"] == "val"]
    assert described["n"] == len(val) and len(described["calibration_scores"]) == len(val)
    dims = described["mean"].shape[0]
    assert described["precision"].shape == (dims, dims) and described["threshold"] > 0
    _, attention = recipe.predict_on_table(
        store, val, stored, evaluation, features=features, progress=False
    )
    scored = score_videos(embedding_matrix(attention, list(val["FileName"])), described)
    assert np.isfinite(scored["score"]).all() and (scored["percentile"] <= 100).all()


def test_calibrated_start_scores_like_zero_shot(site) -> None:
    store, table, path = site
    table = table.iloc[:6]
    backbone = create_encoder(ARCH, weights=str(path))
    zero_shot = zero_shot_predict(backbone, store, table, frames=4, period=2, n_clips=1)
    ef = table["EF"].to_numpy()
    zero_shot_mae = np.abs(zero_shot["EF_pred"].to_numpy() - ef).mean()
    for pooling in ("mean", "attention"):
        model = recipe.build_cardiac_clip(_arch(path, pooling=pooling), seed=0)
        start, _ = recipe.predict_on_table(
            store, table, {"clips": CLIPS}, _recipe(path).evaluation, model=model, progress=False
        )
        if pooling == "mean":  # EchoZoom's scale-1 start + mean pooling: zero-shot's embedding
            np.testing.assert_allclose(start["EF_pred"], zero_shot["EF_pred"], atol=0.05)
        start_mae = np.abs(start["EF_pred"].to_numpy() - ef).mean()
        assert start_mae <= zero_shot_mae + 1.0, pooling


def test_feature_items_look_like_clips_and_the_head_reads_them(site, tmp_path: Path) -> None:
    _, table, path = site
    features, model = _store(site, tmp_path)
    spec = recipe.clip_spec(CLIPS)
    train = FeatureClipDataset(features, table, spec, True, scales=(1, 2), seed=0)
    item = train[0]
    channels = model.image_encoder.num_features
    assert item["clip"].shape == (4, 2 * channels, 1, 1)
    evaluation = FeatureClipDataset(features, table, spec, False, scales=(1,), n_eval_clips=2)
    assert evaluation[0]["clip"].shape == (2, 4, channels, 1, 1)
    head = CachedCardiacCLIP(recipe.build_cardiac_clip(_arch(path, learn_prompts=True), seed=0))
    assert all(not n.startswith(("trunk", "image_encoder.trunk")) for n in head.state_dict())
    with torch.no_grad():
        out = head(torch.stack([train[i]["clip"] for i in range(2)]))
    assert out.ef.shape == (2,) and out.logits.shape == (2, 5)
    with pytest.raises(ValueError, match="scales"):
        FeatureClipDataset(features, table, spec, True, scales=(1, 3))


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"adaptation": "zoom"}, "training.adaptation.*'zoom' is not one of"),
        ({"adaptation": "cached", "cached": {"epoch": 3}}, "training.cached"),
        ({"prior_correction": "test"}, "training.prior_correction"),
    ],
)
def test_a_wrong_adaptation_setting_is_refused_by_name(training: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        config.override(conf_base().training, training, "training")


def test_the_cached_stage_overrides_full_training() -> None:
    training = config.override(
        conf_base().training, {"epochs": 3, "cached": {"epochs": 60}}, "training"
    )
    cached = training.cached_stage()
    assert (training.epochs, cached.epochs) == (3, 60)
    assert cached.batch_size == conf_base().training.cached["batch_size"]
    assert cached.w_ce == training.w_ce  # what cached does not name is the section's


def test_prior_offset_favours_what_training_over_represents() -> None:
    values = np.arange(10, 91)
    uniform = np.repeat(np.arange(20, 81), 1).astype(float)
    normal = np.full(40, 60.0) + np.linspace(-5, 5, 40)
    offset = prior_offset(uniform, normal, values)
    assert offset[values == 25][0] > 0 > offset[values == 60][0]  # rare in the population
    assert np.abs(prior_offset(normal, normal, values)).max() < 1e-6
    assert prior_offset(uniform, normal, values, kind="ranges").shape == (5,)


def test_temporal_pool_starts_as_attention_pooling_and_sees_motion() -> None:
    torch.manual_seed(0)
    frames = torch.randn(2, 6, 8)
    temporal = TemporalPool(8, 4)
    attention = AttentionPool(8, 4)
    attention.load_state_dict(temporal.attention.state_dict())
    torch.testing.assert_close(temporal(frames)[0], attention(frames)[0])
    still = torch.ones(1, 5, 8)
    torch.testing.assert_close(clip_spread(still), torch.zeros(1, 16), atol=1e-5, rtol=0)
    mask = torch.tensor([[True, True, False, False, False]])
    moving = torch.tensor([[[0.0], [2.0], [100.0], [100.0], [100.0]]])
    torch.testing.assert_close(clip_spread(moving, mask), torch.tensor([[1.0, 2.0]]))


def test_lora_mode_trains_adapters_on_clips_and_its_checkpoint_reloads(
    site, tmp_path: Path
) -> None:
    store, table, path = site
    split = _split(table)
    training = {
        "adaptation": "lora",
        "prior_correction": "none",
        "epochs": 1,
        "batch_size": 4,
        "max_batches_per_epoch": 1,
        "select_start": False,
        "work_dir": str(tmp_path / "runs"),
        "lora": {"rank": 2, "alpha": 4.0, "dropout": 0.0, "text_tower": True},
    }
    typed = _recipe(path, training=training, scales=[1])
    checkpoint, result = recipe.train_on_split(store, split, typed, progress=False)
    assert checkpoint["adaptation"] == "lora" and list(checkpoint["meta"]["stages"]) == ["lora"]
    assert checkpoint["arch"]["adapters"]["rank"] == 2
    assert any("lora_B" in name for name in checkpoint["state_dict"])
    assert (tmp_path / "runs").is_dir() and len(result.history) == 1
    val = split[split["role"] == "val"]
    model = recipe.model_from_checkpoint(checkpoint)
    first, _ = recipe.predict_on_table(store, val, checkpoint, typed.evaluation, model=model)
    again, _ = recipe.predict_on_table(store, val, checkpoint, typed.evaluation, progress=False)
    np.testing.assert_allclose(first["EF_pred"], again["EF_pred"], atol=1e-4)

"""The encoder seam: a new clip encoder is one module and its registration.

``TinyClipEncoder`` below is the whole backbone: registered here, it runs CardiacCLIP's
cached adaptation through to predictions on tiny synthetic videos, with no other file
touched.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cardiac_pipeline.config import BenchmarkMethodConfig
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.errors import UserError
from cardiac_pipeline.model import benchmark, recipe
from cardiac_pipeline.model.features import (
    FeatureStore,
    build_feature_store,
    feature_store_key,
    key_digest,
)
from cardiac_pipeline.model.predict import predict_folder
from cardiac_pipeline.model.pretrain import zero_shot_predict
from cardiac_pipeline.nn.encoders import (
    InputSpec,
    VideoEncoder,
    create_encoder,
    list_encoders,
    register_encoder,
)
from tests.conftest import base_recipe, synthetic_clip_store

NAME = "tiny-clip-test"
CLIP_FRAMES = 2
CLIPS = {"frames": 4, "period": 2, "target_fps": None, "pad_mode": "zero", "val_clips": 1}


class TinyClipEncoder(VideoEncoder):
    """A clip encoder: one 3-D convolution over 2-frame clips, a hashed-word text tower."""

    kind = "clip"

    def __init__(self) -> None:
        super().__init__()
        self.name, self.embed_dim = NAME, 8
        self.input_spec = InputSpec(
            size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), clip_frames=CLIP_FRAMES
        )
        self.conv = nn.Conv3d(3, 8, kernel_size=(CLIP_FRAMES, 8, 8), stride=(CLIP_FRAMES, 8, 8))
        self.words = nn.EmbeddingBag(97, 8)

    @property
    def has_text(self) -> bool:
        return True

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.conv(video).mean(dim=(2, 3, 4))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        ids = [[sum(map(ord, word)) % 97 for word in text.split()] for text in texts]
        width = max(len(row) for row in ids)
        padded = torch.tensor([row + row[:1] * (width - len(row)) for row in ids])
        return self.words(padded.to(self.words.weight.device))


@register_encoder(NAME)
def build_tiny_clip(weights=None, device="cpu", **options) -> TinyClipEncoder:
    encoder = TinyClipEncoder()
    if weights:
        encoder.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return encoder.to(device)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClipStore, pd.DataFrame, Path]:
    """10 short synthetic videos in a clip store, and the tiny encoder's weights file."""
    root = tmp_path_factory.mktemp("seam")
    store, index = synthetic_clip_store(root, 10, seed=3, frames_range=(17, 25))
    weights = root / "tiny.pt"
    torch.manual_seed(0)
    torch.save(TinyClipEncoder().state_dict(), weights)
    return store, index[["FileName", "EF"]], weights


def _recipe(
    weights: Path | None, *, name: str = NAME, training: dict | None = None, **cardiac_clip
):
    return base_recipe(
        backbone={"name": name, "pretrained": str(weights) if weights else None},
        cardiac_clip={"scales": [1], "prompt_set": "values", **cardiac_clip},
        clips=CLIPS,
        training=training or {},
        evaluation={"n_clips": 1},
    )


def _arch(weights: Path, **cardiac_clip: object) -> recipe.Arch:
    return recipe.arch_of(_recipe(weights, **cardiac_clip))


def _features(site, tmp_path: Path, arch: recipe.Arch) -> FeatureStore:
    store, table, _ = site
    model = recipe.build_cardiac_clip(arch, seed=0)
    spec = recipe.clip_spec(CLIPS)
    key = feature_store_key(model, store, spec, NAME)
    root = tmp_path / key_digest(key)
    build_feature_store(model, store, root, table["FileName"], spec, key=key, progress=False)
    return FeatureStore(root)


def test_the_encoder_is_registered_and_built_by_name(site) -> None:
    _, _, weights = site
    assert NAME in list_encoders()
    encoder = create_encoder(NAME, weights=str(weights))
    video = torch.randn(3, 3, CLIP_FRAMES, 32, 32)
    assert encoder.encode_video(video).shape == (3, 8)
    assert encoder.encode_text(["a b", "c"]).shape == (2, 8)


def test_mfl_attends_over_the_clips_of_a_clip(site) -> None:
    _, _, weights = site
    model = recipe.build_cardiac_clip(_arch(weights), seed=0).eval()
    clips = torch.randint(0, 256, (2, 6, 1, 112, 112), dtype=torch.uint8)
    with torch.no_grad():
        out = model(clips)
    assert out.attention.shape == (2, 6 // CLIP_FRAMES)  # one weight per backbone clip
    assert out.ef.shape == (2,) and out.logits.shape == (2, 5)
    with pytest.raises(UserError, match="clips.frames"):
        model(clips[:, :5])


def test_echozoom_on_a_clip_encoder_is_one_user_error(site) -> None:
    _, _, weights = site
    with pytest.raises(UserError, match=r"cardiac_clip\.scales.*scales: \[1\]"):
        recipe.build_cardiac_clip(_arch(weights, scales=[1, 2]))


def test_clip_embeddings_are_cached_per_backbone_clip(site, tmp_path: Path) -> None:
    store, table, weights = site
    features = _features(site, tmp_path, _arch(weights))
    name = table["FileName"].iloc[0]
    grid = len(store.load(name)[:: CLIPS["period"]])
    assert features.load(name).shape == (-(-grid // CLIP_FRAMES), 1, 8)
    assert features.entry(name)["step"] == CLIPS["period"] * CLIP_FRAMES
    assert features.key["arch"] == NAME and features.key["kind"] == "clip"


@pytest.mark.parametrize("head", ["prompt", "linear"])
def test_cached_adaptation_runs_through_to_predictions(site, tmp_path: Path, head: str) -> None:
    store, table, weights = site
    training = {
        "adaptation": "cached",
        "prior_correction": "none",
        "cached": {"epochs": 3, "batch_size": 3, "lrs": {"mfl": 1e-2, "head": 1e-2}},
        "work_dir": str(tmp_path / "runs"),
    }
    typed = _recipe(weights, training=training, head=head)
    features = _features(site, tmp_path, recipe.arch_of(typed))
    split = table.assign(role=["train"] * 6 + ["val"] * (len(table) - 6), k=1, seed=0)
    checkpoint, result = recipe.train_on_split(
        store, split, typed, features=features, progress=False
    )
    assert checkpoint["adaptation"] == "cached" and len(result.history) == 3
    val = split[split["role"] == "val"]
    from_features, _ = recipe.predict_on_table(
        store, val, checkpoint, typed.evaluation, features=features, progress=False
    )
    from_pixels, attention = recipe.predict_on_table(
        store, val, checkpoint, typed.evaluation, progress=False
    )
    assert np.isfinite(from_features["EF_pred"]).all()
    item = attention[val["FileName"].iloc[0]]  # MFL weights per backbone clip, placed
    assert item["attention"].shape == item["frame_indices"].shape == (1, 4 // CLIP_FRAMES)
    videos = tmp_path / "videos"  # predict on the AVI files themselves
    videos.mkdir()
    for name in val["FileName"]:
        shutil.copy(store.root.parent / "echonet" / "Videos" / f"{name}.avi", videos)
    predictions, failures, details = predict_folder(videos, checkpoint, n_clips=1, device="cpu")
    assert failures.empty and len(predictions) == len(val)
    assert predictions["EF_pred"].between(0, 100).all()
    # the same model either way (clip starts move to the feature grid: close, not equal)
    assert np.abs(from_features["EF_pred"] - from_pixels["EF_pred"]).max() < 5.0


class MuteClipEncoder(TinyClipEncoder):
    """The tiny clip encoder without text; ``ef_head`` given or not (PanEcho has one)."""

    def __init__(self, with_head: bool) -> None:
        super().__init__()
        self.with_head = with_head

    @property
    def has_text(self) -> bool:
        return False

    def ef_head(self) -> nn.Module | None:
        if not self.with_head:
            return None
        head = nn.Linear(8, 1)
        nn.init.zeros_(head.weight)
        nn.init.constant_(head.bias, 40.0)
        return head


@register_encoder(f"{NAME}-mute")
def build_mute(weights=None, device="cpu", **options) -> MuteClipEncoder:
    return MuteClipEncoder(with_head=False)


def test_zero_shot_takes_clip_encoders_with_text_or_an_ef_head(site) -> None:
    store, table, weights = site
    rows = table.iloc[:3]
    with_text = create_encoder(NAME, weights=str(weights))
    scored = zero_shot_predict(with_text, store, rows, frames=4, period=2, n_clips=2)
    assert scored["FileName"].tolist() == rows["FileName"].tolist()
    assert scored["EF_pred"].between(0, 100).all()
    by_head = zero_shot_predict(MuteClipEncoder(with_head=True), store, rows, frames=4, period=2)
    np.testing.assert_allclose(by_head["EF_pred"], 40.0, atol=1e-4)


def test_the_benchmark_runs_what_applies_and_leaves_out_the_rest(
    site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, table, weights = site
    split = table.assign(role=["train"] * 6 + ["val"] * 2 + ["test"] * (len(table) - 8), k=1)
    split = split.assign(seed=0)
    base = _recipe(
        weights, training={"adaptation": "full", "epochs": 1, "batch_size": 2}, scales=[1, 2]
    )
    mute = _recipe(None, name=f"{NAME}-mute")
    methods = {
        kind: BenchmarkMethodConfig(kind=kind, pretrained=True, overrides={})
        for kind in ("cardiac_clip", "linear_probe")
    }
    with caplog.at_level(logging.WARNING):
        zoomed = benchmark.run_method(
            "cardiac_clip", methods["cardiac_clip"], store, split, base=base,
            pretrained_backbone=None, cache_dir=tmp_path, progress=False,
        )  # fmt: skip
        zero_shot = benchmark.zero_shot_predictions(store, split, mute.backbone, mute.clips, 1)
        probe = benchmark.run_method(
            "linear_probe", methods["linear_probe"], store, split, base=base,
            pretrained_backbone=None, cache_dir=tmp_path, progress=False,
        )  # fmt: skip
    assert zoomed.empty and zero_shot.empty
    assert set(probe["role"]) == {"val", "test"} and probe["EF_pred"].notna().all()
    assert "cardiac_clip left out" in caplog.text and "EchoZoom" in caplog.text
    assert "zero-shot left out" in caplog.text and "neither a text tower" in caplog.text

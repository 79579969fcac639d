"""One benchmark method on one (k, seed) split: train (or not) and predict the TEST videos.

Methods are configuration, not code paths to copy: every CardiacCLIP ablation is the same
recipe with other ``cardiac_clip`` / ``backbone`` values, so all of them share identical
splits, clips, schedule and evaluation. Kinds:

- ``zero_shot``: the pretrained CLIP scores "... ESTIMATED TO BE X%" prompts; no labels.
- ``linear_probe``: ridge regression on frozen pretrained video embeddings (cached once).
- ``cardiac_clip``: the fewshot recipe; ``pretrained: false`` trains from random init.
- ``echonet_regressor``: torchvision R(2+1)D-18 with a regression head, from scratch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cardiac_pipeline.config import (
    BackboneConfig,
    BenchmarkConfig,
    BenchmarkMethodConfig,
    BenchmarkVariantConfig,
    ClipsConfig,
    Recipe,
    override,
    record,
)
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.echo.kshot import EVALUATED_ROLES
from cardiac_pipeline.errors import UserError
from cardiac_pipeline.model import recipe as recipes
from cardiac_pipeline.model.backbone import brings_own_weights
from cardiac_pipeline.model.prediction_cache import PredictionCache
from cardiac_pipeline.nn.encoders import NotApplicable, VideoEncoder, create_encoder

logger = logging.getLogger(__name__)


def layered_recipe(base: Recipe, layers: list[tuple[str, Mapping[str, Any] | None]]) -> Recipe:
    """``base`` with each ``(where, overrides)`` layer over it in turn (``config.override``).

    The benchmark's base is the fewshot recipe, then ``benchmark.recipe`` (CPU budget for a
    grid of many runs), then the variant's ``recipe`` (the quick variant's shorter
    adaptation). A key outside the recipe sections is an error naming ``where``.
    """
    for where, layer in layers:
        base = override(base, layer, where)
    return base


def variant_grid(benchmark: BenchmarkConfig) -> tuple[str, BenchmarkVariantConfig]:
    """The chosen variant's name and grid (``benchmark.variant``: full, quick, ...)."""
    name = benchmark.variant
    if name not in benchmark.variants:
        raise UserError(
            f"parameter 'benchmark.variant': {name!r} is not one of "
            f"{', '.join(sorted(benchmark.variants))}"
        )
    return name, benchmark.variants[name]


def benchmark_recipe(fewshot: Recipe, benchmark: BenchmarkConfig) -> Recipe:
    """The fewshot recipe with ``benchmark.recipe`` over it (CPU-sized clips and epochs for
    a grid of many runs) and the variant's own ``recipe`` over that (the quick variant's
    shorter adaptation): the base every method's overrides start from, every method of
    the variant checked against it."""
    variant, grid = variant_grid(benchmark)
    base = layered_recipe(
        fewshot,
        [
            ("benchmark.recipe", benchmark.recipe),
            (f"benchmark.variants.{variant}.recipe", grid.recipe),
        ],
    )
    check_methods(benchmark.methods, list(grid.methods), base)
    return base


def method_recipe(name: str, method: BenchmarkMethodConfig, base: Recipe) -> Recipe:
    """The base recipe with the method's overrides (its sections' keys, checked)."""
    return override(base, method.overrides, f"benchmark.methods.{name}")


def check_methods(
    methods: Mapping[str, BenchmarkMethodConfig], names: list[str], base: Recipe
) -> None:
    """Fail before the first run on an unknown method or a bad key in any method's recipe.

    A misspelt override (``cardiacclip: {scales: [1]}``) would otherwise run the full model
    under the ablation's name.
    """
    missing = [name for name in names if name not in methods]
    if missing:
        raise UserError(f"benchmark methods {missing} are not defined in benchmark.methods")
    for name in names:
        method_recipe(name, methods[name], base)


def _method_backbone(
    name: str, method: BenchmarkMethodConfig, backbone: BackboneConfig, pretrained: str | None
) -> BackboneConfig:
    """The method's backbone: pretrained methods start from the recipe's own weights (a file
    or a foundation model's folder) or else the pretrain checkpoint; the others from random
    weights of the same architecture (``load_weights: false``)."""
    own = backbone.pretrained
    own = None if own is None or str(own) == recipes.PRETRAIN_CHECKPOINT else own
    if not method.pretrained:
        if own is not None or brings_own_weights(backbone.name):
            return dataclasses.replace(backbone, pretrained=own, load_weights=False)
        return dataclasses.replace(backbone, pretrained=None)
    if own is None and not pretrained:
        raise ValueError(
            f"benchmark method {name!r} needs a pretrained backbone; run the pretrain pipeline"
        )
    start = dataclasses.replace(backbone, pretrained=own or recipes.PRETRAIN_CHECKPOINT)
    return recipes.with_pretrained(start, pretrained)


def _left_out_where_not_applicable(
    run: Callable[..., pd.DataFrame],
) -> Callable[..., pd.DataFrame]:
    """``run`` that returns no predictions, with the reason logged, for a method that does
    not apply to the backbone (``NotApplicable``)."""

    @functools.wraps(run)
    def run_or_leave_out(name: str, *args: Any, **kwargs: Any) -> pd.DataFrame:
        try:
            return run(name, *args, **kwargs)
        except NotApplicable as reason:
            logger.warning("benchmark method %s left out: %s", name, reason)
            return pd.DataFrame(columns=["FileName", "role", "EF_true", "EF_pred"])

    return run_or_leave_out


@_left_out_where_not_applicable
def run_method(
    name: str,
    method: BenchmarkMethodConfig,
    store: ClipStore,
    split: pd.DataFrame,
    *,
    base: Recipe,
    pretrained_backbone: str | None,
    cache_dir: str | Path,
    progress: bool = True,
    features: Any = None,
) -> pd.DataFrame:
    """VAL, calibration and TEST predictions (``FileName, role, EF_true, EF_pred``) of one
    method.

    VAL and calibration videos are predicted like TEST (same clips), so that the
    calibration residuals give the method's conformal interval whose TEST coverage the
    benchmark reports. ``features``: the
    frame-feature store shared by every method adapted on cached features
    (``training.adaptation``) and by their predictions. A method that does not apply to
    the backbone (EchoZoom on a clip encoder, prompts without a text tower) is left out
    with the reason logged: no predictions.
    """
    settings = method_recipe(name, method, base)
    backbone = _method_backbone(name, method, settings.backbone, pretrained_backbone)
    settings = dataclasses.replace(settings, backbone=backbone)
    train = split[split["role"] == "train"]
    if method.kind == "zero_shot":
        return _with_roles(
            split,
            lambda rows: zero_shot_predictions(
                store, rows, backbone, settings.clips, settings.evaluation.n_clips
            ),
        )
    if method.kind == "linear_probe":
        return _with_roles(
            split, lambda rows: _linear_probe(store, train, rows, settings, Path(cache_dir))
        )
    seed = int(split["seed"].dropna().iloc[0]) if split["seed"].notna().any() else 0
    training = dataclasses.replace(
        settings.training, work_dir=str(Path(cache_dir) / "runs" / name), seed=seed
    )
    cardiac_clip = dataclasses.replace(settings.cardiac_clip, method=name)
    settings = dataclasses.replace(settings, training=training, cardiac_clip=cardiac_clip)
    extra: dict[str, Any] = {}
    if method.kind == "echonet_regressor":
        settings, extra = _regressor(settings, train, seed)
    cache = PredictionCache(Path(cache_dir) / "predictions")
    checkpoint, _ = recipes.train_on_split(
        store,
        split,
        settings,
        progress=progress,
        prediction_cache=cache,
        features=features if method.kind == "cardiac_clip" else None,
        **extra,
    )
    model = extra.get("model")
    if model is None:  # the checkpoint holds the selected weights of every stage's model
        model = recipes.model_from_checkpoint(checkpoint)
    evaluation = dataclasses.replace(settings.evaluation, device=settings.training.device)

    def predict(rows: pd.DataFrame) -> pd.DataFrame:
        predictions, _ = recipes.predict_on_table(
            store,
            rows,
            checkpoint,
            evaluation,
            model=model,
            progress=progress,
            cache=cache.scoped({"arch": checkpoint["arch"]}),
            features=features,
        )
        return predictions[["FileName", "EF_true", "EF_pred"]]

    return _with_roles(split, predict)


def _regressor(settings: Recipe, train: pd.DataFrame, seed: int) -> tuple[Recipe, dict[str, Any]]:
    """EchoNet's R(2+1)D: its own model on clips (no cached stage, no prompts)."""
    from cardiac_pipeline.model.adaptation import RANDOM_START
    from cardiac_pipeline.model.video_regressor import (
        EchoNetVideoRegressor,
        l1_loss,
        regressor_param_groups,
    )

    # EchoNet's bias starts at its training-set mean EF (55.6 on EchoNet); here the
    # training set is the k-shot sample: a fixed 55.6 would hand the baseline the
    # population prior that the few-shot protocol withholds from every other method.
    initial_ef = round(float(train["EF"].mean()), 4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        extra = {
            "model": EchoNetVideoRegressor(initial_ef=initial_ef),
            "loss_fn": l1_loss,
            "param_groups_fn": regressor_param_groups,
        }
    training = dataclasses.replace(
        settings.training, adaptation=RANDOM_START, prior_correction="none"
    )
    backbone = BackboneConfig(
        name="r2plus1d_18", pretrained=None, load_weights=False, tokenizer=None, options={}
    )
    return dataclasses.replace(settings, training=training, backbone=backbone), extra


def _with_roles(
    split: pd.DataFrame, predict: Callable[[pd.DataFrame], pd.DataFrame]
) -> pd.DataFrame:
    """``predict`` on each evaluated role of ``split`` apart (val, calibration, test: each
    keeps its prediction-cache entry), tagged with the role."""
    roles = [split[split["role"] == role].assign(role=role) for role in EVALUATED_ROLES]
    parts = [predict(rows).assign(role=rows["role"].iloc[0]) for rows in roles if len(rows)]
    return pd.concat(parts, ignore_index=True)[["FileName", "role", "EF_true", "EF_pred"]]


def _pretrained(backbone: BackboneConfig) -> VideoEncoder:
    options = recipes.encoder_options(record(backbone))
    return create_encoder(backbone.name, backbone.pretrained, **options)


def zero_shot_predictions(
    store: ClipStore,
    test: pd.DataFrame,
    backbone: BackboneConfig,
    clips: ClipsConfig,
    n_clips: int | str,
) -> pd.DataFrame:
    """``FileName, EF_true, EF_pred`` of the pretrained backbone's zero-shot prompts (no
    labels; its own EF head without a text tower); empty, with the reason logged, for a
    backbone with neither."""
    from cardiac_pipeline.model.pretrain import zero_shot_predict

    try:
        table = zero_shot_predict(
            _pretrained(backbone),
            store,
            test,
            frames=clips.frames,
            period=clips.period,
            target_fps=clips.target_fps,
            n_clips=int(n_clips),
        )
    except NotApplicable as reason:
        logger.warning("zero-shot left out: %s", reason)
        return pd.DataFrame(columns=["FileName", "EF_true", "EF_pred"])
    return table.merge(test[["FileName", "EF"]].rename(columns={"EF": "EF_true"}), on="FileName")[
        ["FileName", "EF_true", "EF_pred"]
    ]


def probe_model_id(backbone: BackboneConfig) -> str:
    """Embedding-cache id of a backbone: its name and its weights' content, as in run keys.

    Re-pretraining rewrites the checkpoint in place; the content hash (not the path or the
    file time) makes that a new cache entry and leaves a copied or touched file a hit.
    """
    fingerprint = recipes.weights_fingerprint(backbone)
    # only the hash is shortened: a folder or hub source is named in full, so two of them
    # that share a prefix never share a cache entry
    return f"{backbone.name}-{fingerprint[:16] if fingerprint else backbone.pretrained}"


def _linear_probe(
    store: ClipStore,
    train: pd.DataFrame,
    test: pd.DataFrame,
    settings: Recipe,
    cache_dir: Path,
) -> pd.DataFrame:
    from cardiac_pipeline.model.data import EchoClipDataset
    from cardiac_pipeline.model.linear_probe import (
        EmbeddingCache,
        embed_videos,
        fit_linear_probe,
        predict_linear_probe,
    )

    probe = dataclasses.replace(
        settings.cardiac_clip, scales=[1], pooling="mean", head="linear", learn_prompts=False
    )
    arch = recipes.Arch(backbone=settings.backbone, cardiac_clip=probe, adapters=None)
    model = recipes.build_cardiac_clip(arch, seed=0).eval()
    spec = recipes.clip_spec(settings.clips)
    n_clips = int(settings.evaluation.n_clips)
    model_id = probe_model_id(settings.backbone)
    cache = EmbeddingCache(cache_dir / "embeddings")
    # frame_norm: video embeddings are means of L2-normalised frame embeddings (older
    # entries, means of raw ones, are not served)
    clip_params = {
        **record(settings.clips),
        "n_clips": n_clips,
        "store": str(store.root),
        "frame_norm": True,
    }
    table = pd.concat([train, test]).drop_duplicates("FileName").set_index("FileName")

    def compute(names: list[str]) -> tuple[np.ndarray, list[str]]:
        rows = table.loc[names].reset_index()
        dataset = EchoClipDataset(store, rows, spec, train=False, n_eval_clips=n_clips)
        return embed_videos(lambda clips: model(clips).video_embedding, dataset, batch_size=8)

    train_emb = cache.get_or_compute(model_id, clip_params, train["FileName"].tolist(), compute)
    test_emb = cache.get_or_compute(model_id, clip_params, test["FileName"].tolist(), compute)
    probe = fit_linear_probe(train_emb, train["EF"].to_numpy(dtype=float))
    return pd.DataFrame(
        {
            "FileName": test["FileName"].to_numpy(),
            "EF_true": test["EF"].to_numpy(dtype=float),
            "EF_pred": predict_linear_probe(probe, test_emb),
        }
    )

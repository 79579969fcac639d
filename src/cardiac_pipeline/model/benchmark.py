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

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.echo.kshot import EVALUATED_ROLES
from cardiac_pipeline.model import recipe
from cardiac_pipeline.model.backbone import brings_own_weights
from cardiac_pipeline.model.prediction_cache import PredictionCache
from cardiac_pipeline.nn.encoders import NotApplicable, VideoEncoder, create_encoder
from cardiac_pipeline.params import check_keys

logger = logging.getLogger(__name__)

KINDS = ("zero_shot", "linear_probe", "cardiac_clip", "echonet_regressor")
SECTIONS = ("backbone", "cardiac_clip", "clips", "training", "evaluation")
METHOD_KEYS = frozenset({"kind", "pretrained", *SECTIONS})


def _merge(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(base)
    for key, value in (override or {}).items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def method_settings(method: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The base recipe (backbone, cardiac_clip, clips, training, evaluation) with the method's overrides."""
    return {key: _merge(base[key], method.get(key)) for key in SECTIONS}


def layered_recipe(
    base: dict[str, Any], layers: list[tuple[str, dict[str, Any] | None]]
) -> dict[str, Any]:
    """``base`` with each ``(where, overrides)`` layer merged over it in turn.

    The benchmark's base is the fewshot recipe, then ``benchmark.recipe`` (CPU budget for a
    grid of many runs), then the variant's ``recipe`` (the quick variant's shorter
    adaptation). A key outside the recipe sections is an error naming ``where``.
    """
    for where, layer in layers:
        check_keys(where, layer, SECTIONS)
        base = method_settings(layer or {}, base)
    return base


def method_kind(name: str, method: dict[str, Any]) -> str:
    """The method's ``kind`` (default ``cardiac_clip``); an unknown one is an error."""
    kind = method.get("kind", "cardiac_clip")
    if kind not in KINDS:
        raise ValueError(f"benchmark.methods.{name}: unknown kind {kind!r} (one of {KINDS})")
    return kind


def check_methods(
    methods: dict[str, dict[str, Any]], names: list[str], base: dict[str, Any]
) -> None:
    """Fail before the first run on an unknown method, kind or key in any method's recipe.

    A misspelt override (``cardiacclip: {scales: [1]}``) would otherwise run the full model
    under the ablation's name.
    """
    missing = [name for name in names if name not in methods]
    if missing:
        raise ValueError(f"benchmark methods {missing} are not defined in benchmark.methods")
    for name in names:
        method = methods[name] or {}
        where = f"benchmark.methods.{name}"
        check_keys(where, method, METHOD_KEYS)
        method_kind(name, method)
        recipe.check_recipe(method_settings(method, base), where=f"{where}.")


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
    method: dict[str, Any],
    store: ClipStore,
    split: pd.DataFrame,
    *,
    base: dict[str, Any],
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
    kind = method_kind(name, method)
    settings = method_settings(method, base)
    train = split[split["role"] == "train"]
    uses_pretrained = method.get("pretrained", kind in ("zero_shot", "linear_probe"))
    settings["backbone"] = _method_backbone(
        name, settings["backbone"], bool(uses_pretrained), pretrained_backbone
    )
    device = settings["training"].get("device", "auto")

    if kind == "zero_shot":
        return _with_roles(split, lambda rows: zero_shot_predictions(store, rows, settings))
    if kind == "linear_probe":
        return _with_roles(
            split, lambda rows: _linear_probe(store, train, rows, settings, Path(cache_dir))
        )
    arch = {
        "backbone": settings["backbone"],
        "cardiac_clip": {**settings["cardiac_clip"], "method": name},
    }
    training = {**settings["training"], "work_dir": str(Path(cache_dir) / "runs" / name)}
    seed = int(split["seed"].dropna().iloc[0]) if split["seed"].notna().any() else 0
    training["seed"] = seed
    extra: dict[str, Any] = {}
    if kind == "echonet_regressor":  # its own model on clips: no cached stage, no prompts
        training.update({"adaptation": "full", "prior_correction": "none"})
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
        arch = {
            "backbone": {"name": "r2plus1d_18", "pretrained": None},
            "cardiac_clip": {"method": name},
            "initial_ef": initial_ef,
        }
    cache = PredictionCache(Path(cache_dir) / "predictions")
    checkpoint, result = recipe.train_on_split(
        store,
        split,
        arch=arch,
        clips=settings["clips"],
        training=training,
        eval_batch_size=int(settings["evaluation"].get("batch_size", 1)),
        progress=progress,
        prediction_cache=cache,
        features=features if kind == "cardiac_clip" else None,
        **extra,
    )
    model = extra.get("model")
    if model is None:  # the checkpoint holds the best weights of every stage's model
        model = recipe.model_from_checkpoint(checkpoint)

    def predict(rows: pd.DataFrame) -> pd.DataFrame:
        predictions, _ = recipe.predict_on_table(
            store,
            rows,
            checkpoint,
            {**settings["evaluation"], "device": device},
            model=model,
            progress=progress,
            cache=cache.scoped({"arch": checkpoint.get("arch", arch)}),
            features=features,
        )
        return predictions[["FileName", "EF_true", "EF_pred"]]

    return _with_roles(split, predict)


def _method_backbone(
    name: str, backbone: dict[str, Any], uses_pretrained: bool, pretrained_backbone: str | None
) -> dict[str, Any]:
    """The method's backbone section: pretrained methods start from the recipe's weights
    (a file or a foundation model's folder) or else the pretrain pipeline's checkpoint;
    the others from random weights (of the same architecture: ``load_weights: false``)."""
    own = backbone.get("pretrained")
    own = None if own is None or str(own) == recipe.PRETRAIN_CHECKPOINT else own
    if not uses_pretrained:
        if own is not None or brings_own_weights(backbone["name"]):
            return {**backbone, "pretrained": own, "load_weights": False}
        return {**backbone, "pretrained": None}
    if own is None and not pretrained_backbone:
        raise ValueError(
            f"benchmark method {name!r} needs a pretrained backbone; run the pretrain pipeline"
        )
    return recipe.with_pretrained(
        {**backbone, "pretrained": own or recipe.PRETRAIN_CHECKPOINT}, pretrained_backbone
    )


def _with_roles(
    split: pd.DataFrame, predict: Callable[[pd.DataFrame], pd.DataFrame]
) -> pd.DataFrame:
    """``predict`` on each evaluated role of ``split`` apart (val, calibration, test: each
    keeps its prediction-cache entry), tagged with the role."""
    roles = [split[split["role"] == role].assign(role=role) for role in EVALUATED_ROLES]
    parts = [predict(rows).assign(role=rows["role"].iloc[0]) for rows in roles if len(rows)]
    return pd.concat(parts, ignore_index=True)[["FileName", "role", "EF_true", "EF_pred"]]


def _pretrained(settings: dict[str, Any]) -> VideoEncoder:
    backbone = settings["backbone"]
    return create_encoder(
        backbone["name"], backbone["pretrained"], **recipe.encoder_options(backbone)
    )


def zero_shot_predictions(
    store: ClipStore, test: pd.DataFrame, settings: dict[str, Any]
) -> pd.DataFrame:
    """``FileName, EF_true, EF_pred`` of the pretrained backbone's zero-shot prompts (no
    labels; its own EF head without a text tower); empty, with the reason logged, for a
    backbone with neither."""
    from cardiac_pipeline.model.pretrain import zero_shot_predict

    clips, evaluation = settings["clips"], settings["evaluation"]
    try:
        table = zero_shot_predict(
            _pretrained(settings),
            store,
            test,
            frames=int(clips["frames"]),
            period=int(clips["period"]),
            target_fps=clips.get("target_fps"),
            n_clips=int(evaluation.get("n_clips", 2)),
        )
    except NotApplicable as reason:
        logger.warning("zero-shot left out: %s", reason)
        return pd.DataFrame(columns=["FileName", "EF_true", "EF_pred"])
    return table.merge(test[["FileName", "EF"]].rename(columns={"EF": "EF_true"}), on="FileName")[
        ["FileName", "EF_true", "EF_pred"]
    ]


def probe_model_id(backbone: dict[str, Any]) -> str:
    """Embedding-cache id of a backbone: its name and its weights' content, as in run keys.

    Re-pretraining rewrites the checkpoint in place; the content hash (not the path or the
    file time) makes that a new cache entry and leaves a copied or touched file a hit.
    """
    fingerprint = recipe.weights_fingerprint({"backbone": backbone})
    # only the hash is shortened: a folder or hub source is named in full, so two of them
    # that share a prefix never share a cache entry
    return f"{backbone['name']}-{fingerprint[:16] if fingerprint else backbone.get('pretrained')}"


def _linear_probe(
    store: ClipStore,
    train: pd.DataFrame,
    test: pd.DataFrame,
    settings: dict[str, Any],
    cache_dir: Path,
) -> pd.DataFrame:
    from cardiac_pipeline.model.data import EchoClipDataset
    from cardiac_pipeline.model.linear_probe import (
        EmbeddingCache,
        embed_videos,
        fit_linear_probe,
        predict_linear_probe,
    )

    arch = {
        "backbone": settings["backbone"],
        "cardiac_clip": {"scales": [1], "pooling": "mean", "head": "linear"},
    }
    model = recipe.build_cardiac_clip(arch, seed=0).eval()
    spec = recipe.clip_spec(settings["clips"])
    n_clips = int(settings["evaluation"].get("n_clips", 2))
    model_id = probe_model_id(settings["backbone"])
    cache = EmbeddingCache(cache_dir / "embeddings")
    # frame_norm: video embeddings are means of L2-normalised frame embeddings (older
    # entries, means of raw ones, are not served)
    clip_params = {
        **settings["clips"],
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

"""From configuration dicts to trained CardiacCLIP models and their predictions.

The one place where conf-shaped parameters become a model, datasets and a training run,
shared by the fewshot, benchmark and predict pipelines. A checkpoint produced here is
self-describing: it carries the architecture and clip parameters it needs to be rebuilt,
and its weights, and nothing that needs pickle (it loads with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cardiac_pipeline.config import RECIPE_SECTIONS, keys_of
from cardiac_pipeline.echo.attention import attended_frames
from cardiac_pipeline.echo.clips import ClipSpec, effective_period
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.errors import UserError
from cardiac_pipeline.model.backbone import LOCAL_DIR_PREFIX, brings_own_weights
from cardiac_pipeline.model.cardiac_clip import CardiacCLIP
from cardiac_pipeline.model.data import EchoClipDataset
from cardiac_pipeline.model.prediction_cache import PredictionCache
from cardiac_pipeline.model.train import (
    TrainConfig,
    TrainResult,
    fit,
    predict_videos,
    resolve_device,
)
from cardiac_pipeline.nn.encoders import create_encoder
from cardiac_pipeline.params import check_keys
from cardiac_pipeline.tracking import fingerprint

CHECKPOINT_FORMAT = "cardiac-pipeline/cardiac-clip/1"
MODEL_KWARGS = (
    "scales",
    "tile",
    "pooling",
    "head",
    "attention_hidden",
    "interpolation",
    "prompt_set",
    "learn_prompts",
)
CLIP_SPEC_KWARGS = ("frames", "period", "target_fps", "pad_mode")
logger = logging.getLogger(__name__)

CACHED_EVAL_BATCH = 64
"""VAL videos per forward pass in the cached stage (speed only)."""
# Parameters that change where a run goes, not what it computes: left out of the run key.
_NOT_IN_RUN_KEY = {"device", "num_workers", "eval_batch_size", "eval_clip_chunk", "work_dir"}
# training keys that choose how to adapt, beside TrainConfig's (conf/base/parameters_fewshot.yml)
ADAPTATION_KEYS = frozenset({"adaptation", "cached", "prior_correction"})
PRIOR_CORRECTIONS = ("val", "none")

# The keys each conf section of a recipe may have: the fields of its dataclass (config.py).
RECIPE_KEYS: dict[str, frozenset[str]] = {
    name: keys_of(section) for name, section in RECIPE_SECTIONS.items()
}
_MOVED_KEYS = {"training": {"eval_batch_size": "evaluation.batch_size (VAL and TEST alike)"}}


PRETRAIN_CHECKPOINT = "pretrain"  # backbone.pretrained value: the pretrain pipeline's output


def with_pretrained(backbone: dict[str, Any], checkpoint: str | None) -> dict[str, Any]:
    """``backbone`` with ``pretrained: pretrain`` resolved to ``checkpoint`` and its arch.

    Any other ``pretrained`` (null, a file, ``local-dir:``) is kept, and so is a ``name`` that
    brings its own weights (EchoCLIP's ``hf-hub:...``, ``local-dir:...``).
    The checkpoint knows the architecture it was trained as, so ``name`` follows it.
    """
    if str(backbone.get("pretrained")) != PRETRAIN_CHECKPOINT:
        return dict(backbone)
    if brings_own_weights(backbone.get("name")):
        logger.info(
            "backbone %s brings its own weights; not using the pretrain checkpoint",
            backbone["name"],
        )
        return {**backbone, "pretrained": None}
    if not checkpoint:
        raise ValueError(
            "backbone.pretrained is 'pretrain' but there is no pretrained checkpoint; "
            "run `kedro run --pipeline pretrain` or set backbone.pretrained to null"
        )
    from cardiac_pipeline.model.pretrain import read_checkpoint_arch

    arch = read_checkpoint_arch(checkpoint)
    if arch is None:
        raise ValueError(f"{checkpoint}: not a pretrained checkpoint of the pretrain pipeline")
    if backbone.get("name") and backbone["name"] != arch:
        logger.warning(
            "backbone.name %s differs from the pretrained checkpoint's %s; using %s",
            backbone["name"],
            arch,
            arch,
        )
    return {**backbone, "name": arch, "pretrained": str(checkpoint)}


def build_cardiac_clip(
    arch: dict[str, Any], *, seed: int | None = None, weights: bool = True
) -> CardiacCLIP:
    """CardiacCLIP from ``{"backbone": {name, pretrained}, "cardiac_clip": {...}}``.

    ``weights=False`` builds the architecture only (random init), for loading a checkpoint;
    ``backbone.load_weights: false`` does the same from config (from-scratch ablations, even
    of a name that brings its own weights such as EchoCLIP's ``hf-hub:``).
    """
    backbone = arch["backbone"]
    load_weights = weights and bool(backbone.get("load_weights", True))
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        encoder = create_encoder(
            backbone["name"],
            backbone.get("pretrained"),
            load_weights=load_weights,
            **encoder_options(backbone),
        )
    kwargs = {k: v for k, v in arch["cardiac_clip"].items() if k in MODEL_KWARGS}
    if "scales" in kwargs:
        kwargs["scales"] = tuple(int(s) for s in kwargs["scales"])
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return CardiacCLIP(encoder, **kwargs)


def encoder_options(backbone: Mapping[str, Any]) -> dict[str, Any]:
    """The builder options of a ``backbone`` section: ``options`` and, when set, the
    ``tokenizer`` folder (EchoPrime's text tower)."""
    options = dict(backbone.get("options") or {})
    if backbone.get("tokenizer"):
        options["tokenizer"] = str(backbone["tokenizer"])
    return options


def check_recipe(sections: Mapping[str, Mapping[str, Any] | None], where: str = "") -> None:
    """Fail on any key a recipe section does not know (before hours of training on defaults).

    ``sections`` maps section names (``backbone``, ``cardiac_clip``, ``clips``, ``training``,
    ``evaluation``) to their values; ``where`` prefixes the names in the error
    (``benchmark.methods.cardiac_clip.``).
    """
    for name, values in sections.items():
        if name not in RECIPE_KEYS:
            raise ValueError(f"parameters {where}{name!r}: not one of {sorted(RECIPE_KEYS)}")
        check_keys(f"{where}{name}", values, RECIPE_KEYS[name], _MOVED_KEYS.get(name))


def clip_spec(clips: dict[str, Any]) -> ClipSpec:
    check_keys("clips", clips, RECIPE_KEYS["clips"])
    return ClipSpec(**{k: v for k, v in clips.items() if k in CLIP_SPEC_KWARGS})


def train_config(training: dict[str, Any]) -> TrainConfig:
    """``TrainConfig`` from a conf ``training`` section (``work_dir`` is the caller's)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    check_keys("training", training, names | {"work_dir"} | ADAPTATION_KEYS)
    return TrainConfig(**{k: v for k, v in training.items() if k in names})


def adaptation_settings(training: Mapping[str, Any]) -> tuple[str, dict[str, Any], str]:
    """``(mode, cached-stage training section, prior correction)`` of a ``training`` section.

    ``training.cached`` overrides the section's TrainConfig values for the stage trained on
    cached features (many cheap steps); the rest of the section is the full fine-tuning's.
    """
    from cardiac_pipeline.model.features import check_adaptation

    mode = check_adaptation(training.get("adaptation", "full"))
    cached = dict(training.get("cached") or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    check_keys("training.cached", cached, names)
    prior = training.get("prior_correction", "none")
    if prior not in PRIOR_CORRECTIONS:
        raise ValueError(f"training.prior_correction: {prior!r} is not one of {PRIOR_CORRECTIONS}")
    base = {k: v for k, v in training.items() if k not in ADAPTATION_KEYS}
    return mode, {**base, **cached}, str(prior)


def adapted_arch(arch: dict[str, Any], training: Mapping[str, Any]) -> dict[str, Any]:
    """``arch`` as the adaptation mode builds it: the cached modes learn the prompt
    embeddings (the text tower is not run on cached features)."""
    mode, _, _ = adaptation_settings(training)
    if mode == "full" or "cardiac_clip" not in arch:
        return arch
    return {**arch, "cardiac_clip": {**arch["cardiac_clip"], "learn_prompts": True}}


def run_key(*parts: Any) -> str:
    """Short stable hash of everything that decides a training run (for its work folder)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def weights_fingerprint(arch: dict[str, Any]) -> str | None:
    """Content hash of the backbone's weights file, so a run key changes when they do.

    A path alone is not enough: re-pretraining rewrites ``pretrained_backbone.pt`` in place,
    and a resumable run keyed on the path would return models adapted from the old weights.
    """
    pretrained = (arch.get("backbone") or {}).get("pretrained")
    if not pretrained:
        return None
    folder = Path(str(pretrained).removeprefix(LOCAL_DIR_PREFIX)).expanduser()
    if folder.is_dir():  # a published folder (EchoCLIP's, EchoPrime's model_data)
        return f"dir-{fingerprint(str(folder.resolve()))}"
    if not Path(str(pretrained)).is_file():
        return None
    digest = hashlib.sha1()
    with open(pretrained, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def starts_pretrained(arch: dict[str, Any]) -> bool:
    """Whether the model of ``arch`` starts from learned weights (a checkpoint, EchoCLIP)."""
    backbone = arch.get("backbone") or {}
    if not backbone.get("load_weights", True):
        return False
    return bool(backbone.get("pretrained")) or brings_own_weights(backbone.get("name"))


def work_folder(
    store: ClipStore,
    split: pd.DataFrame,
    *,
    arch: dict[str, Any],
    clips: dict[str, Any],
    training: dict[str, Any],
    features: Any = None,
) -> Path:
    """The resumable work folder of one training run (``last.pt``, its MLflow run record).

    ``training.work_dir``/<split label>-<key>: the key covers the architecture (as the
    adaptation mode builds it) and its weights file, clip and training parameters, the
    split's videos, the clip store and, for the cached modes, the frame-feature store, so
    the same arguments as ``train_on_split`` give the folder it trains in.
    """
    training = _effective_training(arch, training)
    arch = adapted_arch(arch, training)
    train_rows = split[split["role"] == "train"]
    val_rows = split[split["role"] == "val"]
    parts = [
        arch,
        weights_fingerprint(arch),
        {k: v for k, v in clips.items()},
        {k: v for k, v in training.items() if k not in _NOT_IN_RUN_KEY},
        sorted(train_rows["FileName"]),
        sorted(val_rows["FileName"]),
        str(store.root),
    ]
    if adaptation_settings(training)[0] != "full" and features is not None:
        parts.append(features.key)
    key = run_key(*parts)
    return Path(training.get("work_dir", "data/06_models/work")) / f"{_split_label(split)}-{key}"


def _effective_training(arch: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """``training`` as run. Random starting weights: ``select_start`` is off (they are no
    model), and so is adaptation on cached features (a random trunk's frozen features carry
    nothing to adapt to: the whole network trains, ``adaptation: full``)."""
    if starts_pretrained(arch):
        return training
    changes = {}
    if training.get("select_start"):
        changes["select_start"] = False
    if training.get("adaptation", "full") != "full":
        changes["adaptation"] = "full"
    return {**training, **changes} if changes else training


def _portable_path(path: str | Path) -> str:
    """A path as a checkpoint keeps it: relative to the project (cwd), else its name only.

    Checkpoints travel (MLflow artifacts, shared folders); a full path would carry the
    user's folder names with them.
    """
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.name


def _portable_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """``arch`` with a backbone weights file as ``_portable_path`` (only a record: a model is
    rebuilt from a checkpoint without it). ``local-dir:`` sources and folders (EchoCLIP's)
    stay whole: the folder's open_clip config is what rebuilds the architecture.
    """
    backbone = dict(arch.get("backbone") or {})
    pretrained = backbone.get("pretrained")
    if pretrained and not brings_own_weights(pretrained) and not Path(pretrained).is_dir():
        backbone["pretrained"] = _portable_path(str(pretrained))
    return {**arch, "backbone": backbone}


def train_on_split(
    store: ClipStore,
    split: pd.DataFrame,
    *,
    arch: dict[str, Any],
    clips: dict[str, Any],
    training: dict[str, Any],
    eval_batch_size: int = 1,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    model: torch.nn.Module | None = None,
    loss_fn: Callable[..., Any] | None = None,
    param_groups_fn: Callable[..., Any] | None = None,
    prediction_cache: PredictionCache | None = None,
    features: Any = None,
) -> tuple[dict[str, Any], TrainResult]:
    """Train on the split's ``train`` rows, select on its ``val`` rows; a checkpoint dict.

    ``training.adaptation``: ``full`` trains the model on clips (both towers);
    ``cached`` trains EchoZoom's norm and projection, MFL and the prompt embeddings on
    ``features`` (a ``model.features.FeatureStore`` of this backbone) with the trunk frozen;
    ``cached_then_full`` does ``cached`` and then fine-tunes everything from there (LP-FT).
    ``training.prior_correction: val`` adjusts the training logits for the TRAIN videos'
    EF distribution against the VAL videos' (see ``features.prior_offset``).

    The run's work folder (``training.work_dir``/<name>-<key>) holds ``last.pt``: calling
    again after an interruption resumes, and calling again after completion returns at
    once. The key covers the architecture and its weights file, clip and training
    parameters and the split.

    ``training.select_start`` applies to pretrained starts only: random weights are no
    candidate model (they would report an untrained network's near-constant output).
    ``eval_batch_size`` (conf: ``evaluation.batch_size``) videos per VAL forward pass.
    ``prediction_cache`` serves the starting weights' VAL score when already computed.
    """
    check_recipe({"backbone": arch.get("backbone"), "clips": clips, "training": training})
    if not starts_pretrained(arch):
        logger.info(
            "%s starts from random weights: select_start off, adaptation full",
            arch["backbone"]["name"],
        )
    training = _effective_training(arch, training)
    mode, cached_training, prior = adaptation_settings(training)
    if mode != "full" and model is not None:
        raise ValueError(f"training.adaptation {mode!r} builds its own CardiacCLIP; use full")
    arch = adapted_arch(arch, training)
    seed = int(training.get("seed") or 0)  # a user split file records no seed: 0
    spec = clip_spec(clips)
    train_rows = split[split["role"] == "train"]
    val_rows = split[split["role"] == "val"]
    if train_rows.empty:
        raise ValueError("split has no training videos")
    train_set = EchoClipDataset(
        store, train_rows, spec, train=True, seed=seed, augment_pad=int(clips.get("augment_pad", 0))
    )
    val_set = (
        EchoClipDataset(
            store,
            val_rows,
            spec,
            train=False,
            n_eval_clips=int(clips.get("val_clips", 1)),
            seed=seed,
        )
        if len(val_rows)
        else None
    )
    config = train_config({**training, "seed": seed, "eval_batch_size": int(eval_batch_size)})
    work_dir = work_folder(
        store, split, arch=arch, clips=clips, training=training, features=features
    )
    if model is None:
        model = build_cardiac_clip(arch, seed=seed)
    if prior == "val" and isinstance(model, CardiacCLIP) and model.regressor is None:
        if val_rows.empty:
            raise ValueError("training.prior_correction 'val' needs VAL videos in the split")
        from cardiac_pipeline.model.features import model_prior_offset

        model.set_prior_offset(
            model_prior_offset(model, train_rows["EF"].to_numpy(), val_rows["EF"].to_numpy())
        )
    stages = []
    if mode != "full":
        cached_result = _fit_cached(
            model,
            features,
            train_rows,
            val_rows,
            spec,
            cached_training,
            seed=seed,
            eval_batch_size=int(eval_batch_size),
            n_val_clips=int(clips.get("val_clips", 1)),
            work_dir=work_dir / "cached",
            on_epoch_end=on_epoch_end,
            progress=progress,
            prediction_cache=(
                prediction_cache.scoped({"arch": arch, "stage": "cached"})
                if prediction_cache
                else None
            ),
        )
        stages.append(("cached", cached_result))
    if mode != "cached":
        result = fit(
            model,
            train_set,
            val_set,
            config,
            work_dir / "full" if mode != "full" else work_dir,
            loss_fn=loss_fn,
            param_groups_fn=param_groups_fn,
            on_epoch_end=on_epoch_end,
            progress=progress,
            prediction_cache=prediction_cache.scoped({"arch": arch}) if prediction_cache else None,
        )
        stages.append(("full", result))
    result = stages[-1][1]
    if isinstance(model, CardiacCLIP):
        model.set_prior_offset(None)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "arch": _portable_arch(arch),
        "clips": dict(clips),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": {
            "best_epoch": int(result.best_epoch),
            "best_val_mae": float(result.best_val_mae),
            "epochs_run": len(result.history),
            "n_train": len(train_rows),
            "n_val": len(val_rows),
            "work_dir": _portable_path(work_dir),
            "stages": {
                stage: {"best_epoch": int(r.best_epoch), "seconds": float(_seconds(r))}
                for stage, r in stages
            },
        },
        "adaptation": mode,
    }
    if isinstance(model, CardiacCLIP):  # what predict feeds it: size, normalisation, clip
        checkpoint["input_spec"] = dataclasses.asdict(model.input_spec)
    return checkpoint, result


def calibrate_interval(
    checkpoint: dict[str, Any],
    store: ClipStore,
    split: pd.DataFrame,
    evaluation: dict[str, Any],
    *,
    progress: bool = True,
    features: Any = None,
) -> dict[str, Any] | None:
    """Store the split-conformal interval of the selected model in ``checkpoint["interval"]``.

    The calibration videos (``kshot.calibration_rows``: VAL videos that did not pick the
    epoch) are predicted as TEST and predict do (``evaluation.n_clips``), so that their
    residuals are exchangeable with theirs; the half-width is their
    ``ceil((n + 1)(1 - alpha))``-th smallest value (``evaluation.interval_alpha``). None
    (and nothing stored) without VAL videos.
    """
    from cardiac_pipeline.echo.kshot import calibration_rows
    from cardiac_pipeline.echo.metrics import interval_alpha
    from cardiac_pipeline.echo.uncertainty import conformal_calibration

    rows = calibration_rows(split)
    if rows.empty:
        return None
    if not (rows["role"] == "calibration").all():
        logger.warning(
            "the prediction interval is calibrated on the %d VAL videos that also picked the "
            "epoch, so it may cover less than it says; set fewshot.calibration_size to hold "
            "other VAL videos out for it",
            len(rows),
        )
    table, _ = predict_on_table(
        store, rows, checkpoint, evaluation, progress=progress, features=features
    )
    interval = conformal_calibration(table["EF_true"], table["EF_pred"], interval_alpha(evaluation))
    interval["n_clips"] = evaluation.get("n_clips", 4)
    checkpoint["interval"] = interval
    return interval


def _seconds(result: TrainResult) -> float:
    history = result.history
    return float(history["seconds"].sum()) if "seconds" in history else 0.0


def _fit_cached(
    model: CardiacCLIP,
    features: Any,
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    spec: ClipSpec,
    training: dict[str, Any],
    *,
    seed: int,
    eval_batch_size: int,
    n_val_clips: int,
    work_dir: Path,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None,
    progress: bool,
    prediction_cache: PredictionCache | None,
) -> TrainResult:
    """The cached stage: the head trained by ``fit`` on frame features, trunk frozen."""
    from cardiac_pipeline.model.features import (
        CachedCardiacCLIP,
        FeatureClipDataset,
        cached_param_groups,
    )

    if features is None:
        raise ValueError(
            "training.adaptation uses cached features but no frame-feature store was given; "
            "run the pipeline's build_frame_features node (or use adaptation: full)"
        )
    from cardiac_pipeline.model.prediction_cache import weights_digest

    if features.key.get("weights") != weights_digest(model.image_encoder.trunk):
        raise ValueError(
            f"frame-feature store {features.root.name} was built from other trunk weights "
            "than this model's (a random or another pretrained start); rebuild it for this "
            "backbone or use training.adaptation: full"
        )
    scales = model.image_encoder.scales
    train_set = FeatureClipDataset(features, train_rows, spec, True, scales=scales, seed=seed)
    val_set = (
        FeatureClipDataset(
            features,
            val_rows,
            spec,
            False,
            scales=scales,
            n_eval_clips=n_val_clips,
            seed=seed,
        )
        if len(val_rows)
        else None
    )
    # VAL videos per forward: features are small, and one video per pass (what EchoZoom's
    # trunk runs best at on CPU) made validation most of a cached epoch
    batch = max(int(eval_batch_size), CACHED_EVAL_BATCH)
    config = train_config({**training, "seed": seed, "eval_batch_size": batch})
    return fit(
        CachedCardiacCLIP(model),
        train_set,
        val_set,
        config,
        work_dir,
        param_groups_fn=cached_param_groups,
        on_epoch_end=on_epoch_end,
        progress=progress,
        prediction_cache=prediction_cache,
    )


def model_from_checkpoint(checkpoint: dict[str, Any]) -> CardiacCLIP:
    """Rebuild a trained CardiacCLIP (architecture from the checkpoint, then its weights)."""
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"not a cardiac-pipeline CardiacCLIP checkpoint (format {checkpoint.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r})"
        )
    model = build_cardiac_clip(checkpoint["arch"], weights=False)
    stored = checkpoint.get("input_spec")
    if stored is not None and dict(stored) != dataclasses.asdict(model.input_spec):
        raise UserError(
            f"checkpoint: its backbone {checkpoint['arch']['backbone']['name']!r} takes input "
            f"{dict(stored)}, but rebuilt from arch it takes {model.input_spec}; fix: give "
            "predict the checkpoint with the backbone options it was trained with"
        )
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file safely (no code execution)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def predict_on_table(
    store: ClipStore,
    table: pd.DataFrame,
    checkpoint: dict[str, Any],
    evaluation: dict[str, Any],
    *,
    model: torch.nn.Module | None = None,
    progress: bool = True,
    cache: PredictionCache | None = None,
    features: Any = None,
) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """Video-level predictions (mean over evenly spaced clips) for the rows of ``table``.

    A model adapted in ``cached`` mode has the frozen trunk the frame-feature store was
    built with: given that store (``features``), its predictions come from the stored
    features (clip starts on the store's frame grid) instead of running the trunk again.

    Attention entries get ``frame_indices`` [N, T]: the source-video frame of every clip
    frame, so MFL weights can be drawn against the cardiac cycle. ``evaluation.batch_size``
    videos go through one forward pass (default 1; only the speed changes). With ``cache``
    (scoped to the architecture) the table comes from the prediction cache when these
    weights were evaluated on these clips before; attention is then not returned (``{}``).
    """
    check_keys("evaluation", evaluation, RECIPE_KEYS["evaluation"])
    spec = clip_spec(checkpoint["clips"])
    n_clips = evaluation.get("n_clips", 4)
    n_clips = n_clips if n_clips == "all" else int(n_clips)
    model = model or model_from_checkpoint(checkpoint)
    dataset: Any = EchoClipDataset(store, table, spec, train=False, n_eval_clips=n_clips)
    if _features_apply(features, checkpoint, model, n_clips):
        from cardiac_pipeline.model.features import CachedCardiacCLIP, FeatureClipDataset

        dataset = FeatureClipDataset(
            features, table, spec, False, scales=model.image_encoder.scales, n_eval_clips=n_clips
        )
        model = CachedCardiacCLIP(model)
    device = resolve_device(evaluation.get("device", "auto"))
    batch_size = int(evaluation.get("batch_size", 1))
    if cache is not None:
        context = {
            "dataset": dataset.eval_identity(),
            "device": device.type,
            "batch_size": batch_size,
        }
        table = cache.get_or_compute(
            model,
            context,
            lambda: predict_videos(
                model, dataset, device=device, batch_size=batch_size, progress=progress
            )[0],
        )
        return table, {}
    predictions, attention = predict_videos(
        model, dataset, device=device, batch_size=batch_size, progress=progress
    )
    for name, item in attention.items():
        if "frame_indices" not in item and "start" in item:
            period = effective_period(spec, store.entry(name).get("fps"))
            starts = np.asarray(item["start"]).reshape(-1, 1)
            indices = starts + period * np.arange(spec.frames)[None, :]
            attended = np.shape(item["attention"])[-1] if "attention" in item else spec.frames
            item["frame_indices"] = attended_frames(indices, attended)
    return predictions, attention


def _features_apply(features: Any, checkpoint: dict[str, Any], model: Any, n_clips: Any) -> bool:
    """Whether ``features`` hold this cached-mode model's trunk output (else: pixels)."""
    if features is None or checkpoint.get("adaptation") != "cached" or n_clips == "all":
        return False
    from cardiac_pipeline.model.prediction_cache import weights_digest

    if not isinstance(model, CardiacCLIP):
        return False
    same = features.key.get("weights") == weights_digest(model.image_encoder.trunk)
    if not same:
        logger.warning("frame features were made by another trunk; predicting from pixels")
    return same


def split_k_seed(split: pd.DataFrame) -> tuple[int | None, int | None]:
    """The (k, seed) a split table records; None for a user-supplied split without them."""
    values = []
    for column in ("k", "seed"):
        found = split[column].dropna().unique() if column in split else []
        values.append(int(found[0]) if len(found) else None)
    return values[0], values[1]


def _split_label(split: pd.DataFrame) -> str:
    k, seed = split_k_seed(split)
    return f"k{k}_seed{seed}" if k is not None and seed is not None else "split"

"""From the typed recipe (``config.Recipe``) to trained CardiacCLIP models and predictions.

The one place where the recipe's sections become a model, datasets and a training run,
shared by the fewshot, benchmark and predict pipelines and the ``train`` entry point; how
each adaptation mode trains is its row in ``model/adaptation.py``. A checkpoint produced here is
self-describing: it carries the architecture and clip parameters it needs to be rebuilt,
and its weights, and nothing that needs pickle (it loads with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cardiac_pipeline.config import (
    BackboneConfig,
    CardiacClipConfig,
    ClipsConfig,
    EvaluationConfig,
    LoraConfig,
    Recipe,
    record,
)
from cardiac_pipeline.echo.attention import attended_frames
from cardiac_pipeline.echo.clips import ClipSpec, effective_period
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.errors import UserError
from cardiac_pipeline.model.adaptation import (
    CACHED_STAGE,
    Adaptation,
    adaptation,
    for_random_start,
    predicts_from_features,
)
from cardiac_pipeline.model.backbone import LOCAL_DIR_PREFIX, brings_own_weights
from cardiac_pipeline.model.cardiac_clip import CardiacCLIP
from cardiac_pipeline.model.data import EchoClipDataset
from cardiac_pipeline.model.ood import describe_calibration
from cardiac_pipeline.model.prediction_cache import PredictionCache
from cardiac_pipeline.model.train import (
    TrainResult,
    fit,
    predict_videos,
    resolve_device,
)
from cardiac_pipeline.nn.encoders import create_encoder
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

PRETRAIN_CHECKPOINT = "pretrain"  # backbone.pretrained value: the pretrain pipeline's output


@dataclass(frozen=True, kw_only=True)
class Arch:
    """What builds a model: the backbone, the model around it and (``lora``) its adapters.

    A checkpoint keeps ``record(arch)``; ``model_from_checkpoint`` rebuilds from that.
    """

    backbone: BackboneConfig
    cardiac_clip: CardiacClipConfig
    adapters: LoraConfig | None


def arch_of(recipe: Recipe) -> Arch:
    """The recipe's model as its adaptation mode builds it: the cached modes learn the
    prompt embeddings (the text tower is not run on cached features), ``lora`` adds
    adapters."""
    mode = adaptation(recipe.training.adaptation)
    cardiac_clip = recipe.cardiac_clip
    if mode.learn_prompts:
        cardiac_clip = dataclasses.replace(cardiac_clip, learn_prompts=True)
    adapters = recipe.training.lora if mode.adapters else None
    return Arch(backbone=recipe.backbone, cardiac_clip=cardiac_clip, adapters=adapters)


def with_pretrained(backbone: BackboneConfig, checkpoint: str | None) -> BackboneConfig:
    """``backbone`` with ``pretrained: pretrain`` resolved to ``checkpoint`` and its arch.

    Any other ``pretrained`` (null, a file, ``local-dir:``) is kept, and so is a ``name`` that
    brings its own weights (EchoCLIP's ``hf-hub:...``, ``local-dir:...``).
    The checkpoint knows the architecture it was trained as, so ``name`` follows it.
    """
    if str(backbone.pretrained) != PRETRAIN_CHECKPOINT:
        return backbone
    if brings_own_weights(backbone.name):
        logger.info(
            "backbone %s brings its own weights; not using the pretrain checkpoint", backbone.name
        )
        return dataclasses.replace(backbone, pretrained=None)
    if not checkpoint:
        raise ValueError(
            "backbone.pretrained is 'pretrain' but there is no pretrained checkpoint; "
            "run `kedro run --pipeline pretrain` or set backbone.pretrained to null"
        )
    from cardiac_pipeline.model.pretrain import read_checkpoint_arch

    arch = read_checkpoint_arch(checkpoint)
    if arch is None:
        raise ValueError(f"{checkpoint}: not a pretrained checkpoint of the pretrain pipeline")
    if backbone.name != arch:
        logger.warning(
            "backbone.name %s differs from the pretrained checkpoint's %s; using %s",
            backbone.name,
            arch,
            arch,
        )
    return dataclasses.replace(backbone, name=arch, pretrained=str(checkpoint))


def build_cardiac_clip(arch: Arch, *, seed: int | None = None, weights: bool = True) -> CardiacCLIP:
    """CardiacCLIP of ``arch`` (with its adapters, if any).

    ``weights=False`` builds the architecture only (random init), for loading a checkpoint;
    ``backbone.load_weights: false`` does the same from config (from-scratch ablations, even
    of a name that brings its own weights such as EchoCLIP's ``hf-hub:``).
    """
    return _build(record(arch), seed=seed, weights=weights)


def _build(arch: Mapping[str, Any], *, seed: int | None, weights: bool) -> CardiacCLIP:
    """The model of an ``Arch`` record (a checkpoint's ``arch``, older ones included)."""
    backbone = arch["backbone"]
    load_weights = weights and bool(backbone["load_weights"])
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        encoder = create_encoder(
            backbone["name"],
            backbone["pretrained"],
            load_weights=load_weights,
            **encoder_options(backbone),
        )
    kwargs = {k: v for k, v in arch["cardiac_clip"].items() if k in MODEL_KWARGS}
    if "scales" in kwargs:
        kwargs["scales"] = tuple(int(s) for s in kwargs["scales"])
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = CardiacCLIP(encoder, **kwargs)
        if arch.get("adapters"):  # a checkpoint field: older records have none
            from cardiac_pipeline.model.lora import add_adapters

            add_adapters(model, arch["adapters"])
    return model


def clip_spec(clips: ClipsConfig | Mapping[str, Any]) -> ClipSpec:
    """The ``ClipSpec`` of a ``clips`` section or of a checkpoint's record of one."""
    values = record(clips) if isinstance(clips, ClipsConfig) else clips
    return ClipSpec(**{k: values[k] for k in CLIP_SPEC_KWARGS if k in values})


def encoder_options(backbone: Mapping[str, Any]) -> dict[str, Any]:
    """The builder options of a ``backbone`` record: ``options`` and, when set, the
    ``tokenizer`` folder (EchoPrime's text tower). Checkpoints of older runs have neither."""
    options = dict(backbone.get("options") or {})
    if backbone.get("tokenizer"):
        options["tokenizer"] = str(backbone["tokenizer"])
    return options


def run_key(*parts: Any) -> str:
    """Short stable hash of everything that decides a training run (for its work folder)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def weights_fingerprint(backbone: BackboneConfig) -> str | None:
    """Content hash of the backbone's weights file, so a run key changes when they do.

    A path alone is not enough: re-pretraining rewrites ``pretrained_backbone.pt`` in place,
    and a resumable run keyed on the path would return models adapted from the old weights.
    """
    pretrained = backbone.pretrained
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


def starts_pretrained(backbone: BackboneConfig) -> bool:
    """Whether a model of ``backbone`` starts from learned weights (a checkpoint, EchoCLIP)."""
    if not backbone.load_weights:
        return False
    return bool(backbone.pretrained) or brings_own_weights(backbone.name)


def effective_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` as run. Random starting weights: ``select_start`` is off (they are no
    model), and the adaptation is ``adaptation.for_random_start``'s (a random trunk's frozen
    features carry nothing to adapt to: the whole network trains)."""
    if starts_pretrained(recipe.backbone):
        return recipe
    mode = for_random_start(adaptation(recipe.training.adaptation))
    training = dataclasses.replace(recipe.training, select_start=False, adaptation=mode.name)
    return dataclasses.replace(recipe, training=training)


def work_folder(
    store: ClipStore, split: pd.DataFrame, recipe: Recipe, *, features: Any = None
) -> Path:
    """The resumable work folder of one training run (``last.pt``, its MLflow run record).

    ``training.work_dir``/<split label>-<key>: the key covers the architecture (as the
    adaptation mode builds it) and its weights file, clip and training parameters, the
    split's videos, the clip store and, for the cached modes, the frame-feature store, so
    the same recipe as ``train_on_split``'s gives the folder it trains in.
    """
    recipe = effective_recipe(recipe)
    training = record(recipe.training)
    parts = [
        record(arch_of(recipe)),
        weights_fingerprint(recipe.backbone),
        record(recipe.clips),
        {k: v for k, v in training.items() if k not in _NOT_IN_RUN_KEY},
        sorted(split.loc[split["role"] == "train", "FileName"]),
        sorted(split.loc[split["role"] == "val", "FileName"]),
        str(store.root),
    ]
    if adaptation(recipe.training.adaptation).needs_frame_features and features is not None:
        parts.append(features.key)
    key = run_key(*parts)
    return Path(recipe.training.work_dir) / f"{_split_label(split)}-{key}"


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


def _portable_arch(arch: Arch) -> dict[str, Any]:
    """``record(arch)`` with a backbone weights file as ``_portable_path`` (only a record: a
    model is rebuilt from a checkpoint without it). ``local-dir:`` sources and folders (EchoCLIP's) stay whole: the
    folder's open_clip config is what rebuilds the architecture.
    """
    kept = record(arch)
    pretrained = arch.backbone.pretrained
    if pretrained and not brings_own_weights(pretrained) and not Path(pretrained).is_dir():
        kept["backbone"]["pretrained"] = _portable_path(str(pretrained))
    return kept


@dataclass
class _Run:
    """One ``train_on_split`` call's pieces, shared by its stages."""

    store: ClipStore
    recipe: Recipe
    mode: Adaptation
    train_rows: pd.DataFrame
    val_rows: pd.DataFrame
    work_dir: Path
    on_epoch_end: Callable[[int, dict[str, float]], None] | None
    progress: bool
    prediction_cache: PredictionCache | None
    features: Any


def train_on_split(
    store: ClipStore,
    split: pd.DataFrame,
    recipe: Recipe,
    *,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    model: torch.nn.Module | None = None,
    loss_fn: Callable[..., Any] | None = None,
    param_groups_fn: Callable[..., Any] | None = None,
    prediction_cache: PredictionCache | None = None,
    features: Any = None,
) -> tuple[dict[str, Any], TrainResult]:
    """Train on the split's ``train`` rows, select on its ``val`` rows; a checkpoint dict.

    ``training.adaptation`` picks the row of ``model.adaptation``'s table: its stages run in
    order (``cached``: the head on ``features``, a ``model.features.FeatureStore`` of this
    backbone, trunk frozen; ``full``: the model on clips; ``lora``: adapters, MFL and head
    on clips). ``training.prior_correction: val`` adjusts the training logits for the TRAIN
    videos' EF distribution against the VAL videos' (see ``features.prior_offset``).
    ``training.seed`` seeds the run; ``evaluation.batch_size`` videos per VAL forward pass.

    The run's work folder (``work_folder``) holds ``last.pt``: calling again after an
    interruption resumes, and calling again after completion returns at once.
    ``training.select_start`` applies to pretrained starts only (``effective_recipe``).
    ``prediction_cache`` serves the starting weights' VAL score when already computed.
    """
    if not starts_pretrained(recipe.backbone):
        logger.info(
            "%s starts from random weights: select_start off, adaptation %s",
            recipe.backbone.name,
            for_random_start(adaptation(recipe.training.adaptation)).name,
        )
    recipe = effective_recipe(recipe)
    mode = adaptation(recipe.training.adaptation)
    if not mode.any_model and model is not None:
        raise ValueError(f"training.adaptation {mode.name!r} builds its own CardiacCLIP")
    run = _Run(
        store,
        recipe,
        mode,
        split[split["role"] == "train"],
        split[split["role"] == "val"],
        work_folder(store, split, recipe, features=features),
        on_epoch_end,
        progress,
        prediction_cache,
        features,
    )
    if run.train_rows.empty:
        raise ValueError("split has no training videos")
    arch = arch_of(recipe)
    if model is None:
        model = build_cardiac_clip(arch, seed=recipe.training.seed)
    _set_prior(model, recipe.training.prior_correction, run)
    stages = []
    for stage in mode.stages:
        folder = run.work_dir / mode.stage_folder(stage)
        if stage == CACHED_STAGE:
            result = _fit_cached(model, run, folder)
        else:
            result = _fit_clips(model, run, folder, arch, loss_fn, param_groups_fn)
        stages.append((stage, result))
    if isinstance(model, CardiacCLIP):
        model.set_prior_offset(None)
    return _checkpoint(model, run, arch, stages), stages[-1][1]


def _set_prior(model: torch.nn.Module, prior: str, run: _Run) -> None:
    """``training.prior_correction: val``: the TRAIN-vs-VAL EF prior offset on the logits."""
    if prior != "val" or not isinstance(model, CardiacCLIP) or model.regressor is not None:
        return
    if run.val_rows.empty:
        raise ValueError("training.prior_correction 'val' needs VAL videos in the split")
    from cardiac_pipeline.model.features import model_prior_offset

    model.set_prior_offset(
        model_prior_offset(model, run.train_rows["EF"].to_numpy(), run.val_rows["EF"].to_numpy())
    )


def _fit_clips(
    model: torch.nn.Module,
    run: _Run,
    folder: Path,
    arch: Arch,
    loss_fn: Callable[..., Any] | None,
    param_groups_fn: Callable[..., Any] | None,
) -> TrainResult:
    """A stage on clips (``full``, ``lora``): ``fit`` on the split's videos."""
    recipe, seed = run.recipe, run.recipe.training.seed
    spec = clip_spec(recipe.clips)
    train_set = EchoClipDataset(
        run.store, run.train_rows, spec, train=True, seed=seed, augment_pad=recipe.clips.augment_pad
    )
    val_set = (
        EchoClipDataset(
            run.store,
            run.val_rows,
            spec,
            train=False,
            n_eval_clips=recipe.clips.val_clips,
            seed=seed,
        )
        if len(run.val_rows)
        else None
    )
    cache = run.prediction_cache
    return fit(
        model,
        train_set,
        val_set,
        recipe.training.loop(eval_batch_size=recipe.evaluation.batch_size),
        folder,
        loss_fn=loss_fn,
        param_groups_fn=param_groups_fn,
        on_epoch_end=run.on_epoch_end,
        progress=run.progress,
        prediction_cache=cache.scoped({"arch": record(arch)}) if cache else None,
    )


def _checkpoint(
    model: torch.nn.Module, run: _Run, arch: Arch, stages: list[tuple[str, TrainResult]]
) -> dict[str, Any]:
    """The self-describing checkpoint of a trained model (primitives and tensors only)."""
    result = stages[-1][1]
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "arch": _portable_arch(arch),
        "clips": record(run.recipe.clips),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": {
            "selected_epoch": int(result.selected_epoch),
            "selected_val_mae": float(result.selected_val_mae),
            "epochs_run": len(result.history),
            "n_train": len(run.train_rows),
            "n_val": len(run.val_rows),
            "work_dir": _portable_path(run.work_dir),
            "stages": {
                stage: {"selected_epoch": int(r.selected_epoch), "seconds": float(_seconds(r))}
                for stage, r in stages
            },
        },
        "adaptation": run.mode.name,
    }
    if isinstance(model, CardiacCLIP):  # what predict feeds it: size, normalisation, clip
        checkpoint["input_spec"] = dataclasses.asdict(model.input_spec)
    return checkpoint


def calibrate_interval(
    checkpoint: dict[str, Any],
    store: ClipStore,
    split: pd.DataFrame,
    evaluation: EvaluationConfig,
    *,
    progress: bool = True,
    features: Any = None,
) -> dict[str, Any] | None:
    """Store the split-conformal interval of the selected model in ``checkpoint["interval"]``.

    The calibration videos (``kshot.calibration_rows``: VAL videos that did not pick the
    epoch) are predicted as TEST and predict do (``evaluation.n_clips``), so that their
    residuals are exchangeable with theirs; the half-width is their
    ``ceil((n + 1)(1 - alpha))``-th smallest value (``evaluation.interval_alpha``). None
    (and nothing stored) without VAL videos. Their pooled embeddings go to
    ``checkpoint["ood"]`` (``model.ood.describe_calibration``): what predict scores new
    videos against, to flag those the interval does not hold for.
    """
    from cardiac_pipeline.echo.kshot import calibration_rows
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
    table, attention = predict_on_table(
        store, rows, checkpoint, evaluation, progress=progress, features=features
    )
    interval = conformal_calibration(
        table["EF_true"], table["EF_pred"], float(evaluation.interval_alpha)
    )
    interval["n_clips"] = evaluation.n_clips
    checkpoint["interval"] = interval
    description = describe_calibration(attention, list(table["FileName"]), evaluation.ood_quantile)
    if description is not None:
        checkpoint["ood"] = description
    return interval


def _seconds(result: TrainResult) -> float:
    history = result.history
    return float(history["seconds"].sum()) if "seconds" in history else 0.0


def _fit_cached(model: CardiacCLIP, run: _Run, folder: Path) -> TrainResult:
    """The cached stage: the head trained by ``fit`` on frame features, trunk frozen."""
    from cardiac_pipeline.model.features import (
        CachedCardiacCLIP,
        FeatureClipDataset,
        cached_param_groups,
    )
    from cardiac_pipeline.model.prediction_cache import weights_digest

    features, recipe = run.features, run.recipe
    if features is None:
        raise ValueError(
            "training.adaptation uses cached features but no frame-feature store was given; "
            "run the pipeline's build_frame_features node (or use adaptation: full)"
        )
    if features.key.get("weights") != weights_digest(model.image_encoder.trunk):
        raise ValueError(
            f"frame-feature store {features.root.name} was built from other trunk weights "
            "than this model's (a random or another pretrained start); rebuild it for this "
            "backbone or use training.adaptation: full"
        )
    spec, seed, scales = clip_spec(recipe.clips), recipe.training.seed, model.image_encoder.scales
    train_set = FeatureClipDataset(features, run.train_rows, spec, True, scales=scales, seed=seed)
    val_set = (
        FeatureClipDataset(
            features,
            run.val_rows,
            spec,
            False,
            scales=scales,
            n_eval_clips=recipe.clips.val_clips,
            seed=seed,
        )
        if len(run.val_rows)
        else None
    )
    # VAL videos per forward: features are small, and one video per pass (what EchoZoom's
    # trunk runs best at on CPU) made validation most of a cached epoch
    batch = max(recipe.evaluation.batch_size, CACHED_EVAL_BATCH)
    cache = run.prediction_cache
    return fit(
        CachedCardiacCLIP(model),
        train_set,
        val_set,
        recipe.training.cached_stage().loop(eval_batch_size=batch),
        folder,
        param_groups_fn=cached_param_groups,
        on_epoch_end=run.on_epoch_end,
        progress=run.progress,
        prediction_cache=(
            cache.scoped({"arch": record(arch_of(recipe)), "stage": CACHED_STAGE})
            if cache
            else None
        ),
    )


def model_from_checkpoint(checkpoint: dict[str, Any]) -> CardiacCLIP:
    """Rebuild a trained CardiacCLIP (architecture from the checkpoint, then its weights)."""
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"not a cardiac-pipeline CardiacCLIP checkpoint (format {checkpoint.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r})"
        )
    model = _build(checkpoint["arch"], seed=None, weights=False)
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
    evaluation: EvaluationConfig,
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
    videos go through one forward pass (only the speed changes). With ``cache`` (scoped to
    the architecture) the table comes from the prediction cache when these weights were
    evaluated on these clips before; attention is then not returned (``{}``).
    """
    spec = clip_spec(checkpoint["clips"])
    n_clips = evaluation.n_clips
    model = model or model_from_checkpoint(checkpoint)
    dataset: Any = EchoClipDataset(store, table, spec, train=False, n_eval_clips=n_clips)
    if _features_apply(features, checkpoint, model, n_clips):
        from cardiac_pipeline.model.features import CachedCardiacCLIP, FeatureClipDataset

        dataset = FeatureClipDataset(
            features, table, spec, False, scales=model.image_encoder.scales, n_eval_clips=n_clips
        )
        model = CachedCardiacCLIP(model)
    device = resolve_device(evaluation.device)
    batch_size = evaluation.batch_size

    def predict() -> tuple[pd.DataFrame, dict[str, Any]]:
        return predict_videos(
            model, dataset, device=device, batch_size=batch_size, progress=progress
        )

    if cache is not None:
        context = {"dataset": dataset.eval_identity(), "device": device.type}
        context["batch_size"] = batch_size
        return cache.get_or_compute(model, context, lambda: predict()[0]), {}
    predictions, attention = predict()
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
    if features is None or n_clips == "all" or not isinstance(model, CardiacCLIP):
        return False
    if not predicts_from_features(checkpoint.get("adaptation")):
        return False
    from cardiac_pipeline.model.prediction_cache import weights_digest

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

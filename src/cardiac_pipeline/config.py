"""Typed parameters: one frozen dataclass per conf section, checked before any node runs.

Each top-level key of ``conf/base/parameters*.yml`` is a field of ``ProjectConfig``; each
section's keys are the fields of its dataclass, with the defaults of ``conf/base`` (a test
compares them). ``build_config`` turns the merged parameters into a ``ProjectConfig`` and
raises ``UserError`` on the first problem: an unknown section or key (naming the closest
known one), a missing required key, a value of the wrong type or out of range. These
dataclasses are the one list of keys per section: ``recipe.RECIPE_KEYS`` and the nodes'
key checks are derived from them. Adding a key is one line in its dataclass (and its value
in conf/base).

List-valued keys take lists only: ``--params=fewshot.shots=4`` is refused with the fix
(``fewshot.shots=[4]``), so that a scalar never means "a grid of one" by accident.
The training section is ``TrainConfig`` (the training loop's own config), its fields under
the same names with the conf recipe's defaults, plus ``work_dir``.

No Kedro here: plain mappings in, dataclasses or ``UserError`` out.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, Union

from cardiac_pipeline.errors import UserError
from cardiac_pipeline.model.train import TrainConfig
from cardiac_pipeline.params import check_keys


def param(
    default: Any = MISSING,
    *,
    minimum: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A section field: its conf default (copied for lists and dicts), an optional range."""
    metadata = {"minimum": minimum, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: _copy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class IngestionConfig:
    """``ingestion``: ``echo.echonet.build_video_index`` options."""

    min_frames: int = param(16, minimum=1)
    ef_tolerance: float = param(1.0, minimum=0)
    workers: int = param(2, minimum=1)
    ef_range: tuple[float, float] = param((0.0, 100.0))
    frame_count_tolerance: int = param(0, minimum=0)


@dataclass(frozen=True, kw_only=True)
class PreprocessingConfig:
    """``preprocessing``: how videos are decoded into the clip store."""

    size: int = param(112, minimum=8)
    workers: int = param(2, minimum=1)
    fit: str = param("stretch", choices=("stretch", "center_crop", "pad"))
    grey_tolerance: int = param(8, minimum=0)


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    """``synthetic.generate``: ``echo.synthetic.generate_dataset`` arguments (target site)."""

    n_train: int = param(700, minimum=0)
    n_val: int = param(250, minimum=0)
    n_test: int = param(250, minimum=0)
    seed: int = param(2025, minimum=0)
    site: str = param("target", choices=("target", "source"))
    workers: int = param(2, minimum=1)
    site_overrides: dict[str, Any] | None = param(None)


@dataclass(frozen=True, kw_only=True)
class CorpusConfig(GenerateConfig):
    """``pretrain.corpus``: the source-site corpus (same arguments, its own defaults)."""

    n_train: int = param(1500, minimum=1)
    n_val: int = param(0, minimum=0)
    n_test: int = param(0, minimum=0)
    seed: int = param(11, minimum=0)
    site: str = param("source", choices=("target", "source"))
    site_overrides: dict[str, Any] | None = param({"frames_range": [40, 64]})


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """``synthetic``: the embedded dataset, generated only into ``root``."""

    root: str = param()  # conf/base/globals.yml synthetic_root
    generate: GenerateConfig = param(GenerateConfig())


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """``pretrain``: contrastive video-report pretraining of the small CLIP."""

    arch: str = param()  # conf/base/globals.yml clip_arch
    corpus_root: str = param()  # conf/base/globals.yml pretrain_corpus_root
    corpus: CorpusConfig = param(CorpusConfig())
    epochs: int = param(4, minimum=1)
    batch_size: int = param(16, minimum=2)
    frames: int = param(4, minimum=1)
    period: int = param(6, minimum=1)
    target_fps: float | None = param(30, minimum=1)
    lr: float = param(5.0e-4, minimum=0)
    weight_decay: float = param(0.1, minimum=0)
    warmup_epochs: float = param(0.5, minimum=0)
    lr_schedule: str = param("cosine", choices=("cosine", "constant"))
    seed: int = param(0, minimum=0)
    device: str = param("auto")
    progress: bool = param(True)


@dataclass(frozen=True, kw_only=True)
class FewshotConfig:
    """``fewshot``: the (k, seed) grid, or a user's split file instead of it."""

    shots: list[int] = param([1, 2], minimum=1)
    seeds: list[int] = param([0, 1], minimum=0)
    val_size: int | None = param(60, minimum=1)
    val_seed: int = param(0, minimum=0)
    calibration_size: int | None = param(200, minimum=0)
    split_file: str | None = param(None)


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """``backbone``: the registered encoder and where its weights come from."""

    name: str = param()  # conf/base/globals.yml clip_arch
    pretrained: str | None = param("pretrain")
    load_weights: bool = param(True)
    tokenizer: str | None = param(None)  # EchoPrime's BiomedBERT tokenizer folder
    options: dict[str, Any] = param({})  # the builder's options (tests shrink widths)


@dataclass(frozen=True, kw_only=True)
class CardiacClipConfig:
    """``cardiac_clip``: the model around the backbone (EchoZoom, MFL, head)."""

    method: str = param("cardiac_clip")
    scales: list[int] = param([1, 2], minimum=1)
    tile: int = param(112, minimum=8)
    pooling: str = param("attention", choices=("attention", "mean", "temporal"))
    head: str = param("prompt", choices=("prompt", "linear"))
    attention_hidden: int | None = param(None, minimum=1)
    interpolation: str | None = param(None)
    prompt_set: str = param("values", choices=("values", "ranges"))  # the head's prompts
    learn_prompts: bool = param(False)  # set by the cached modes (no text tower there)


@dataclass(frozen=True, kw_only=True)
class ClipsConfig:
    """``clips``: which frames make one clip, for training and VAL."""

    frames: int = param(8, minimum=1)
    period: int = param(4, minimum=1)
    target_fps: float | None = param(30, minimum=1)
    pad_mode: str = param("zero")
    augment_pad: int = param(12, minimum=0)
    val_clips: int = param(1, minimum=1)


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """``evaluation``: TEST-time clips and batching."""

    n_clips: int | Literal["all"] = param(2, minimum=1)
    batch_size: int = param(1, minimum=1)
    device: str = param("auto")
    attention_plot_videos: int = param(4, minimum=0)
    bootstrap_resamples: int = param(2000, minimum=1)  # percentile bootstrap over TEST videos
    bootstrap_seed: int = param(0, minimum=0)
    ci_level: float = param(0.95, minimum=0)
    interval_alpha: float = param(0.1, minimum=0)  # 0.1: 90% conformal intervals


@dataclass(frozen=True, kw_only=True)
class PredictQualityConfig:
    """``predict.quality``: thresholds of ``echo.inputs.input_quality_flags``."""

    fps_range: tuple[float, float] = param((30.0, 80.0))
    black_level: float = param(10.0, minimum=0)
    max_black_frame_share: float = param(0.5, minimum=0)
    min_mean_intensity: float = param(8.0, minimum=0)
    min_frames: int | None = param(None, minimum=1)


@dataclass(frozen=True, kw_only=True)
class PredictConfig:
    """``predict``: LVEF for a folder of new videos."""

    input_dir: str | None = param(None)
    model: str | None = param(None)
    models_dir: str = param("data/06_models/fewshot_models")
    n_clips: int | Literal["all"] = param(2, minimum=1)
    device: str = param("auto")
    size: int = param(112, minimum=8)
    load_batch: int = param(8, minimum=1)
    report_title: str = param("LVEF predictions")
    quality: PredictQualityConfig = param(PredictQualityConfig())


@dataclass(frozen=True, kw_only=True)
class BenchmarkVariantConfig:
    """``benchmark.variants.<name>``: one grid of the benchmark."""

    shots: list[int] = param(minimum=1)
    seeds: list[int] = param(minimum=0)
    methods: list[str] = param()
    val_size: int | None = param(None, minimum=1)
    calibration_size: int | None = param(0, minimum=0)
    recipe: dict[str, Any] | None = param(None)


@dataclass(frozen=True, kw_only=True)
class BenchmarkConfig:
    """``benchmark``: methods on identical k-shot splits (their recipes: model/benchmark.py)."""

    variant: str = param("full")
    work_dir: str = param("data/06_models/benchmark")
    recipe: dict[str, Any] | None = param()
    variants: dict[str, BenchmarkVariantConfig] = param()
    methods: dict[str, dict[str, Any] | None] = param()
    comparisons: list[list[str]] = param()  # paired bootstrap CIs of A - B ("method@k")


# The training loop's config, with the defaults of conf/base where the CPU recipe differs
# from the reference (TrainConfig's own defaults), plus the conf-only work folder.
_TRAINING_CONF_DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "lrs": {"image_tower": 2.0e-4, "text_tower": 2.0e-4, "mfl": 2.0e-4, "head": 2.0e-4},
    "max_batches_per_epoch": 64,
    "select_start": True,
}
# the cached stage's TrainConfig values over the section's (training.cached)
_CACHED_STAGE_DEFAULTS: dict[str, Any] = {
    "epochs": 60,
    "batch_size": 8,
    "max_batches_per_epoch": 32,
    "lrs": {"mfl": 1.0e-3, "head": 1.0e-3},
    "warmup_steps": 20,
    "checkpoint_every": 20,
    "select_epoch": "last",
}
_TRAINING_ONLY_IN_CODE = frozenset({"eval_batch_size"})  # conf: evaluation.batch_size


def _training_dataclass() -> type:
    hints = typing.get_type_hints(TrainConfig)
    fields = []
    for item in dataclasses.fields(TrainConfig):
        if item.name in _TRAINING_ONLY_IN_CODE:
            continue
        if item.name in _TRAINING_CONF_DEFAULTS:
            default = _TRAINING_CONF_DEFAULTS[item.name]
        elif item.default is not MISSING:
            default = item.default
        else:
            default = item.default_factory()  # type: ignore[misc]
        fields.append((item.name, hints[item.name], param(default)))
    fields.append(("work_dir", str, param("data/06_models/work")))
    # how to adapt (model/recipe.py): beside the loop's own settings
    fields.append(
        ("adaptation", str, param("cached", choices=("cached", "full", "cached_then_full")))
    )
    fields.append(("prior_correction", str, param("val", choices=("val", "none"))))
    fields.append(("cached", dict[str, Any], param(_CACHED_STAGE_DEFAULTS)))
    not_loop = {"work_dir", "adaptation", "prior_correction", "cached"}

    def __post_init__(self: Any) -> None:  # TrainConfig's own range checks
        TrainConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k not in not_loop})

    return dataclasses.make_dataclass(
        "TrainingConfig",
        fields,
        frozen=True,
        kw_only=True,
        namespace={
            "__doc__": "``training``: ``TrainConfig`` fields (conf defaults) + work_dir.",
            "__post_init__": __post_init__,
            "__module__": __name__,
        },
    )


TrainingConfig = _training_dataclass()


@dataclass(frozen=True, kw_only=True)
class ProjectConfig:
    """Every parameter section; a top-level key not named here stops the run."""

    echonet_root: str = param()  # conf/base/globals.yml echonet_root
    ingestion: IngestionConfig = param(IngestionConfig())
    preprocessing: PreprocessingConfig = param(PreprocessingConfig())
    synthetic: SyntheticConfig = param()
    pretrain: PretrainConfig = param()
    fewshot: FewshotConfig = param(FewshotConfig())
    backbone: BackboneConfig = param()
    cardiac_clip: CardiacClipConfig = param(CardiacClipConfig())
    clips: ClipsConfig = param(ClipsConfig())
    training: TrainingConfig = param(TrainingConfig())  # type: ignore[valid-type]
    evaluation: EvaluationConfig = param(EvaluationConfig())
    predict: PredictConfig = param(PredictConfig())
    benchmark: BenchmarkConfig = param()


# The sections a training recipe is made of (fewshot, benchmark methods, predict).
RECIPE_SECTIONS: dict[str, type] = {
    "backbone": BackboneConfig,
    "cardiac_clip": CardiacClipConfig,
    "clips": ClipsConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
}


def keys_of(cls: type) -> frozenset[str]:
    """The keys a section of type ``cls`` may have."""
    return frozenset(f.name for f in dataclasses.fields(cls))


# ----------------------------------------------------------------------------- building


def build_config(parameters: Mapping[str, Any]) -> ProjectConfig:
    """The typed parameters of a run; ``UserError`` naming the key on the first problem."""
    return build_section(ProjectConfig, parameters, "")


def build_section(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    """``cls`` from a conf mapping: known keys only, types and ranges checked."""
    if values is None:
        values = {}
    check_keys(where, values, keys_of(cls))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for item in dataclasses.fields(cls):
        path = f"{where}.{item.name}" if where else item.name
        if item.name not in values:
            if item.default is MISSING and item.default_factory is MISSING:
                raise UserError(f"parameter {path!r} is missing; set it in conf/base or conf/local")
            continue
        kwargs[item.name] = _convert(values[item.name], hints[item.name], path, item.metadata)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a dataclass's own checks (TrainConfig ranges)
        message = str(exc).replace("TrainConfig.", f"{where}.")
        raise UserError(f"parameters {where!r}: {message}; fix it in conf/ or --params") from None


def _convert(value: Any, hint: Any, path: str, metadata: Mapping[str, Any]) -> Any:
    """``value`` checked against ``hint`` and the field's range; nested sections built."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, path, metadata)
            except UserError as exc:
                problems.append(exc)
        raise problems[0] if len(problems) == 1 else _wrong(path, value, _describe(hint))
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise _wrong(path, value, _describe(hint))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise _wrong(path, value, "a mapping of keys to values")
        return build_section(hint, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            example = f"[{value}]" if not isinstance(value, Mapping) else "[...]"
            raise UserError(
                f"parameter {path!r}: expected a list, got {value!r}; write {path}={example} "
                "(or a list in conf/local or a run file)"
            )
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise _wrong(path, value, f"a list of {len(args)} values")
        items = args[:1] if origin is list or (args and args[-1] is Ellipsis) else args
        items = items * len(value) if len(items) == 1 else items
        return [
            _convert(v, t, f"{path}[{i}]", metadata)
            for i, (v, t) in enumerate(zip(value, items, strict=True))
        ]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _wrong(path, value, "a mapping of keys to values")
        item_type = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        return {k: _convert(v, item_type, f"{path}.{k}", {}) for k, v in value.items()}
    return _scalar(value, hint, path, metadata)


def _scalar(value: Any, hint: Any, path: str, metadata: Mapping[str, Any]) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong(path, value, "true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(path, value, "an integer")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(path, value, "a number")
    elif hint is str:
        if not isinstance(value, str):
            raise _wrong(path, value, "a string")
    elif isinstance(hint, type) and not isinstance(value, hint):
        raise _wrong(path, value, hint.__name__)
    minimum = metadata.get("minimum")
    if minimum is not None and hint in (int, float) and value < minimum:
        raise UserError(
            f"parameter {path!r}: must be >= {minimum}, got {value!r}; fix it in conf/ or --params"
        )
    choices = metadata.get("choices")
    if choices and value not in choices:
        raise UserError(
            f"parameter {path!r}: {value!r} is not one of {', '.join(map(str, choices))}; "
            "fix it in conf/ or --params"
        )
    return value


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
    )


def _wrong(path: str, value: Any, expected: str) -> UserError:
    return UserError(
        f"parameter {path!r}: expected {expected}, got {value!r} ({type(value).__name__}); "
        "fix it in conf/ or --params"
    )

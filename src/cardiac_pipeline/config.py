"""Typed parameters: one frozen dataclass per conf section, built once at the boundary.

Each top-level key of ``conf/base/parameters*.yml`` is a field of ``ProjectConfig``; each
section's keys are the fields of its dataclass. conf/base is the one place a value lives:
no field has a default, so conf/base must spell out every key (a test compares them).
``build_config`` turns the merged parameters into a ``ProjectConfig`` and raises
``UserError`` on the first problem: an unknown section or key (naming the closest known
one), a missing key, a value of the wrong type or out of range. Nodes turn the
``params:<section>`` mapping Kedro hands them into the dataclass with ``section`` and pass
that on; model code reads attributes. ``override`` lays partial mappings over a section
(``dataclasses.replace``, checked like conf): benchmark recipes and methods.

List-valued keys take lists only: ``--params=fewshot.shots=4`` is refused with the fix
(``fewshot.shots=[4]``), so that a scalar never means "a grid of one" by accident.
The training section is ``TrainingConfig``: ``TrainConfig``'s fields (``loop`` builds the
loop's config), the work folder and how to adapt (``model/adaptation.py``).

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
from cardiac_pipeline.model.adaptation import ADAPTATION_MODES
from cardiac_pipeline.model.train import TrainConfig
from cardiac_pipeline.params import check_keys


def param(
    *,
    minimum: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A section field: no default (conf/base holds every value), an optional range."""
    return field(metadata={"minimum": minimum, "choices": choices})


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class IngestionConfig:
    """``ingestion``: ``echo.echonet.build_video_index`` options."""

    min_frames: int = param(minimum=1)
    ef_tolerance: float = param(minimum=0)
    workers: int = param(minimum=1)
    ef_range: tuple[float, float] = param()
    frame_count_tolerance: int = param(minimum=0)


@dataclass(frozen=True, kw_only=True)
class PreprocessingConfig:
    """``preprocessing``: how videos are decoded into the clip store."""

    size: int = param(minimum=8)
    workers: int = param(minimum=1)
    fit: str = param(choices=("stretch", "center_crop", "pad"))
    grey_tolerance: int = param(minimum=0)


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    """``synthetic.generate`` and ``pretrain.corpus``: ``echo.synthetic.generate_dataset``
    arguments."""

    n_train: int = param(minimum=0)
    n_val: int = param(minimum=0)
    n_test: int = param(minimum=0)
    seed: int = param(minimum=0)
    site: str = param(choices=("target", "source"))
    workers: int = param(minimum=1)
    site_overrides: dict[str, Any] | None = param()
    output: str = param(choices=("avi", "clip_store"))  # echo.synthetic.VIDEO_OUTPUTS


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """``synthetic``: the embedded dataset, generated only into ``root``."""

    root: str = param()  # conf/base/globals.yml synthetic_root
    generate: GenerateConfig = param()


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """``pretrain``: contrastive video-report pretraining of the small CLIP."""

    arch: str = param()  # conf/base/globals.yml clip_arch
    corpus_root: str = param()  # conf/base/globals.yml pretrain_corpus_root
    corpus: GenerateConfig = param()
    epochs: int = param(minimum=1)
    batch_size: int = param(minimum=2)
    frames: int = param(minimum=1)
    period: int = param(minimum=1)
    target_fps: float | None = param(minimum=1)
    lr: float = param(minimum=0)
    weight_decay: float = param(minimum=0)
    warmup_epochs: float = param(minimum=0)
    lr_schedule: str = param(choices=("cosine", "constant"))
    seed: int = param(minimum=0)
    device: str = param()
    progress: bool = param()


@dataclass(frozen=True, kw_only=True)
class FewshotConfig:
    """``fewshot``: the (k, seed) grid, or a user's split file instead of it."""

    shots: list[int] = param(minimum=1)
    seeds: list[int] = param(minimum=0)
    val_size: int | None = param(minimum=1)
    val_seed: int = param(minimum=0)
    calibration_size: int | None = param(minimum=0)
    split_file: str | None = param()


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """``backbone``: the registered encoder and where its weights come from."""

    name: str = param()  # conf/base/globals.yml clip_arch
    pretrained: str | None = param()
    load_weights: bool = param()
    tokenizer: str | None = param()  # EchoPrime's BiomedBERT tokenizer folder
    options: dict[str, Any] = param()  # the builder's options (tests shrink widths)


@dataclass(frozen=True, kw_only=True)
class CardiacClipConfig:
    """``cardiac_clip``: the model around the backbone (EchoZoom, MFL, head)."""

    method: str = param()
    scales: list[int] = param(minimum=1)
    tile: int = param(minimum=8)
    pooling: str = param(choices=("attention", "mean", "temporal"))
    head: str = param(choices=("prompt", "linear"))
    attention_hidden: int = param(minimum=1)
    interpolation: str = param()
    prompt_set: str = param(choices=("values", "ranges"))  # the head's prompts
    learn_prompts: bool = param()  # set by the cached modes (no text tower there)


@dataclass(frozen=True, kw_only=True)
class ClipsConfig:
    """``clips``: which frames make one clip, for training and VAL."""

    frames: int = param(minimum=1)
    period: int = param(minimum=1)
    target_fps: float | None = param(minimum=1)
    pad_mode: str = param()
    augment_pad: int = param(minimum=0)
    val_clips: int = param(minimum=1)


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """``evaluation``: TEST-time clips and batching, and the statistics of the metrics."""

    n_clips: int | Literal["all"] = param(minimum=1)
    batch_size: int = param(minimum=1)
    device: str = param()
    attention_plot_videos: int = param(minimum=0)
    bootstrap_resamples: int = param(minimum=1)  # percentile bootstrap over TEST videos
    bootstrap_seed: int = param(minimum=0)
    ci_level: float = param(minimum=0)
    interval_alpha: float = param(minimum=0)  # 0.1: 90% conformal intervals
    ood_quantile: float = param(minimum=0)  # out-of-distribution flag: ~1% of in-dist.


@dataclass(frozen=True, kw_only=True)
class PredictQualityConfig:
    """``predict.quality``: thresholds of ``echo.inputs.input_quality_flags``."""

    fps_range: tuple[float, float] = param()
    black_level: float = param(minimum=0)
    max_black_frame_share: float = param(minimum=0)
    min_mean_intensity: float = param(minimum=0)
    min_frames: int | None = param(minimum=1)


@dataclass(frozen=True, kw_only=True)
class PredictConfig:
    """``predict``: LVEF for a folder of new videos."""

    input_dir: str | None = param()
    model: str | None = param()
    models_dir: str = param()
    n_clips: int | Literal["all"] = param(minimum=1)
    device: str = param()
    size: int = param(minimum=8)
    load_batch: int = param(minimum=1)
    report_title: str = param()
    quality: PredictQualityConfig = param()


@dataclass(frozen=True, kw_only=True)
class BenchmarkVariantConfig:
    """``benchmark.variants.<name>``: one grid of the benchmark."""

    shots: list[int] = param(minimum=1)
    seeds: list[int] = param(minimum=0)
    methods: list[str] = param()
    val_size: int | None = param(minimum=1)
    calibration_size: int | None = param(minimum=0)
    recipe: dict[str, Any] | None = param()  # overrides of the recipe sections


@dataclass(frozen=True, kw_only=True)
class BenchmarkMethodConfig:
    """``benchmark.methods.<name>``: a kind, whether it starts from the pretrained backbone,
    and its overrides of the recipe sections (partial by design: what it changes)."""

    kind: str = param(choices=("zero_shot", "linear_probe", "cardiac_clip", "echonet_regressor"))
    pretrained: bool = param()
    overrides: dict[str, Any] = param()  # conf: the recipe section keys beside kind, pretrained

    @classmethod
    def from_conf(cls, values: Mapping[str, Any], where: str) -> BenchmarkMethodConfig:
        """``{kind, pretrained, <section>: {...}}`` with the sections as ``overrides``."""
        check_keys(where, values, {"kind", "pretrained", *RECIPE_SECTIONS})
        own = {k: values[k] for k in ("kind", "pretrained") if k in values}
        overrides = {k: v for k, v in values.items() if k not in own}
        return build_section(cls, {**own, "overrides": overrides}, where)


@dataclass(frozen=True, kw_only=True)
class BenchmarkConfig:
    """``benchmark``: methods on identical k-shot splits (their recipes: model/benchmark.py)."""

    variant: str = param()
    work_dir: str = param()
    recipe: dict[str, Any] | None = param()
    variants: dict[str, BenchmarkVariantConfig] = param()
    methods: dict[str, BenchmarkMethodConfig] = param()
    comparisons: list[list[str]] = param()  # paired bootstrap CIs of A - B ("method@k")


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """``training.lora``: the low-rank adapters of ``adaptation: lora`` (peft)."""

    rank: int = param(minimum=1)
    alpha: float = param(minimum=0)
    dropout: float = param(minimum=0)
    text_tower: bool = param()  # adapters on the text tower too (else it stays frozen)


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """``training``: ``TrainConfig``'s fields (the loop; ``eval_batch_size`` is
    ``evaluation.batch_size``), the work folder, and how to adapt (model/adaptation.py)."""

    epochs: int = param(minimum=1)
    batch_size: int = param(minimum=1)
    grad_accum_steps: int = param(minimum=1)
    lrs: dict[str, float] = param()
    weight_decay: float = param(minimum=0)
    optimizer: str = param()
    schedule_epochs: int | None = param(minimum=1)
    warmup_steps: int = param(minimum=0)
    min_lr_ratio: float = param(minimum=0)
    w_ce: float = param()
    w_kl: float = param()
    w_l1: float = param()
    device: str = param()
    amp: str = param()
    channels_last: bool | str = param()
    seed: int = param(minimum=0)
    num_workers: int | None = param(minimum=0)
    drop_last: bool = param()
    eval_clip_chunk: int | None = param(minimum=1)
    max_grad_norm: float | None = param()
    patience: int | None = param(minimum=1)
    checkpoint_every: int = param(minimum=1)
    max_batches_per_epoch: int | None = param(minimum=1)
    select_start: bool = param()
    select_epoch: str = param()
    work_dir: str = param()
    adaptation: str = param(choices=ADAPTATION_MODES)
    prior_correction: str = param(choices=("val", "none"))
    cached: dict[str, Any] = param()  # the cached stage's TrainConfig values over these
    lora: LoraConfig = param()

    def __post_init__(self) -> None:  # TrainConfig's own checks, and the cached stage's keys
        check_keys("training.cached", self.cached, LOOP_KEYS)
        self.loop(eval_batch_size=1)
        if self.cached:
            self.cached_stage()

    def loop(self, *, eval_batch_size: int) -> TrainConfig:
        """The training loop's config (``eval_batch_size``: VAL videos per forward pass)."""
        values = {name: getattr(self, name) for name in LOOP_KEYS}
        return TrainConfig(**values, eval_batch_size=eval_batch_size)

    def cached_stage(self) -> TrainingConfig:
        """This section with ``cached`` over it: the stage trained on frame features."""
        return dataclasses.replace(self, **self.cached, cached={})


# The TrainConfig fields that conf's training section sets (eval_batch_size: evaluation's)
LOOP_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"eval_batch_size"}


@dataclass(frozen=True, kw_only=True)
class ProjectConfig:
    """Every parameter section; a top-level key not named here stops the run."""

    echonet_root: str = param()  # conf/base/globals.yml echonet_root
    ingestion: IngestionConfig = param()
    preprocessing: PreprocessingConfig = param()
    synthetic: SyntheticConfig = param()
    pretrain: PretrainConfig = param()
    fewshot: FewshotConfig = param()
    backbone: BackboneConfig = param()
    cardiac_clip: CardiacClipConfig = param()
    clips: ClipsConfig = param()
    training: TrainingConfig = param()
    evaluation: EvaluationConfig = param()
    predict: PredictConfig = param()
    benchmark: BenchmarkConfig = param()


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """The sections a training recipe is made of (fewshot, benchmark methods, train)."""

    backbone: BackboneConfig
    cardiac_clip: CardiacClipConfig
    clips: ClipsConfig
    training: TrainingConfig
    evaluation: EvaluationConfig


# The sections a training recipe is made of, by name.
RECIPE_SECTIONS: dict[str, type] = {
    "backbone": BackboneConfig,
    "cardiac_clip": CardiacClipConfig,
    "clips": ClipsConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
}
SECTIONS: dict[str, type] = {
    item.name: typing.get_type_hints(ProjectConfig)[item.name]
    for item in dataclasses.fields(ProjectConfig)
}


# Retired keys, by section type: where each went (named in the error)
MOVED_KEYS: dict[type, dict[str, str]] = {
    TrainingConfig: {"eval_batch_size": "evaluation.batch_size (VAL and TEST alike)"}
}


def keys_of(cls: type) -> frozenset[str]:
    """The keys a section of type ``cls`` may have."""
    return frozenset(f.name for f in dataclasses.fields(cls))


def section(name: str, values: Any) -> Any:
    """The typed top-level section ``name`` from a node's ``params:<name>`` mapping.

    The boundary: nodes call this on what Kedro passes them and hand the dataclass on.
    An already typed section is returned as it is.
    """
    cls = SECTIONS[name]
    return values if isinstance(values, cls) else build_section(cls, values, name)


def recipe_of(**sections: Any) -> Recipe:
    """The typed ``Recipe`` from its five sections (mappings or dataclasses)."""
    return Recipe(**{name: section(name, values) for name, values in sections.items()})


def override(typed: Any, values: Mapping[str, Any] | None, where: str) -> Any:
    """``typed`` with ``values`` over it (``dataclasses.replace``), each checked as conf is.

    Nested sections and mapping-valued keys (``lrs``, ``cached``) merge key by key.
    """
    if not values:
        return typed
    check_keys(where, values, keys_of(type(typed)), MOVED_KEYS.get(type(typed)))
    hints = typing.get_type_hints(type(typed))
    changes = {}
    for item in dataclasses.fields(typed):
        if item.name not in values:
            continue
        path = f"{where}.{item.name}"
        current, value = getattr(typed, item.name), values[item.name]
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[item.name] = override(current, value, path)
            continue
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            value = _merged(current, value)
        changes[item.name] = _convert(value, hints[item.name], path, item.metadata)
    try:
        return dataclasses.replace(typed, **changes)
    except UserError:
        raise
    except (TypeError, ValueError) as exc:
        raise UserError(f"parameters {where!r}: {exc}; fix it in conf/ or --params") from None


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = _merged(out[key], value) if both else value
    return out


def record(typed: Any) -> dict[str, Any]:
    """A section as plain primitives (checkpoints, run keys, MLflow params)."""
    return dataclasses.asdict(typed)


# ----------------------------------------------------------------------------- building


def build_config(parameters: Mapping[str, Any]) -> ProjectConfig:
    """The typed parameters of a run; ``UserError`` naming the key on the first problem."""
    return build_section(ProjectConfig, parameters, "")


def build_section(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    """``cls`` from a conf mapping: known keys only, types and ranges checked."""
    if values is None:
        values = {}
    check_keys(where, values, keys_of(cls), MOVED_KEYS.get(cls))
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
    except UserError:
        raise
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
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _wrong(path, value, "a mapping of keys to values")
        if hasattr(hint, "from_conf"):
            return hint.from_conf(value, path)
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

"""Typed parameters: conf/base and the dataclasses agree; every section refuses unknown keys."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from kedro.config import OmegaConfigLoader

from cardiac_pipeline import config
from cardiac_pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_params() -> dict[str, Any]:
    loader = OmegaConfigLoader(
        str(ROOT / "conf"),
        base_env="base",
        default_run_env="base",
        merge_strategy={"parameters": "soft"},
    )
    return loader["parameters"]


def _with(params: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(params)
    *parents, last = path.split(".")
    target = out
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value
    return out


def _sections(cls: type = config.ProjectConfig, prefix: str = ""):
    """(path, dataclass) of every section and nested section."""
    for item in dataclasses.fields(cls):
        hint = config.typing.get_type_hints(cls)[item.name]
        if dataclasses.is_dataclass(hint):
            yield f"{prefix}{item.name}", hint
            yield from _sections(hint, f"{prefix}{item.name}.")


def test_conf_base_builds_and_every_top_level_key_is_a_section(base_params) -> None:
    built = config.build_config(base_params)
    assert set(base_params) == config.keys_of(config.ProjectConfig)
    assert built.fewshot.shots == base_params["fewshot"]["shots"]


def _compare_defaults(cls: type, conf: dict[str, Any], path: str) -> list[str]:
    problems = []
    instance_fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = config.typing.get_type_hints(cls)
    for key, value in conf.items():
        item = instance_fields[key]
        where = f"{path}.{key}"
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            continue  # required: conf/base is its only source
        default = (
            item.default if item.default is not dataclasses.MISSING else item.default_factory()
        )
        if dataclasses.is_dataclass(hints[key]):
            problems += _compare_defaults(hints[key], value, where)
        elif (list(default) if isinstance(default, tuple) else default) != value:
            problems.append(f"{where}: code {default!r} != conf {value!r}")
    return problems


def test_code_defaults_equal_conf_base_defaults(base_params) -> None:
    problems = []
    for name, cls in _sections():
        if "." in name or name not in base_params:
            continue
        problems += _compare_defaults(cls, base_params[name], name)
    assert problems == []


def test_required_keys_are_in_conf_base(base_params) -> None:
    config.build_config(base_params)  # raises on a missing required key
    with pytest.raises(UserError, match=r"'synthetic.root' is missing"):
        config.build_config(_with(base_params, "synthetic", {"generate": {}}))


SECTIONS = [name for name, _ in _sections()]


def test_sections_cover_every_conf_section_and_nesting() -> None:
    assert {
        "ingestion",
        "preprocessing",
        "predict",
        "predict.quality",
        "fewshot",
        "benchmark",
    } <= set(SECTIONS)
    assert {"pretrain", "pretrain.corpus", "synthetic", "synthetic.generate", "training"} <= set(
        SECTIONS
    )
    assert {"clips", "cardiac_clip", "backbone", "evaluation"} <= set(SECTIONS)


@pytest.mark.parametrize("section", SECTIONS)
def test_unknown_key_in_every_section_names_the_closest_known_key(base_params, section) -> None:
    cls = dict(_sections())[section]
    known = sorted(config.keys_of(cls))[0]
    params = _with(base_params, f"{section}.{known}x", 1)
    with pytest.raises(
        UserError, match=rf"'{section}': unknown key\(s\) '{known}x' \(did you mean '{known}'"
    ):
        config.build_config(params)


def test_unknown_key_in_a_benchmark_variant_is_refused(base_params) -> None:
    params = _with(base_params, "benchmark.variants.quick.shot", [1])
    with pytest.raises(
        UserError, match=r"'benchmark.variants.quick'.*'shot' \(did you mean 'shots'"
    ):
        config.build_config(params)


def test_misspelt_section_names_the_section_meant(base_params) -> None:
    params = {**base_params, "trainig": {"epochs": 1}}
    with pytest.raises(
        UserError, match=r"unknown section\(s\) 'trainig' \(did you mean 'training'\?\)"
    ):
        config.build_config(params)


def test_scalar_shots_is_refused_with_the_list_to_write(base_params) -> None:
    with pytest.raises(
        UserError, match=r"'fewshot.shots': expected a list, got 4; write fewshot.shots=\[4\]"
    ):
        config.build_config(_with(base_params, "fewshot.shots", 4))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("fewshot.shots", [0, 1], r"'fewshot.shots\[0\]': must be >= 1, got 0"),
        ("training.epochs", 0, r"training.epochs must be >= 1, got 0"),
        ("training.epochs", "three", r"'training.epochs': expected an integer, got 'three'"),
        ("clips.frames", 2.5, r"'clips.frames': expected an integer, got 2.5"),
        ("training.lrs", {"head": "fast"}, r"'training.lrs.head': expected a number"),
        ("evaluation.n_clips", "al", r"'evaluation.n_clips': expected an integer or 'all'"),
        ("preprocessing.fit", "crop", r"'preprocessing.fit': 'crop' is not one of"),
        ("backbone.load_weights", "no", r"'backbone.load_weights': expected true or false"),
        ("ingestion.workers", 0, r"'ingestion.workers': must be >= 1"),
        ("predict.quality.fps_range", [30], r"'predict.quality.fps_range': expected a list of 2"),
    ],
)
def test_types_and_ranges(base_params, path, value, message) -> None:
    with pytest.raises(UserError, match=message):
        config.build_config(_with(base_params, path, value))


def test_null_where_allowed_and_all_clips(base_params) -> None:
    params = _with(_with(base_params, "fewshot.val_size", None), "evaluation.n_clips", "all")
    built = config.build_config(params)
    assert built.fewshot.val_size is None and built.evaluation.n_clips == "all"


def test_recipe_keys_and_node_key_sets_come_from_the_dataclasses() -> None:
    from cardiac_pipeline.model import recipe
    from cardiac_pipeline.pipelines.benchmark import nodes as benchmark_nodes
    from cardiac_pipeline.pipelines.fewshot import nodes as fewshot_nodes
    from cardiac_pipeline.pipelines.pretrain import nodes as pretrain_nodes

    for name, cls in config.RECIPE_SECTIONS.items():
        assert recipe.RECIPE_KEYS[name] == config.keys_of(cls)
    assert set(fewshot_nodes.FEWSHOT_KEYS) == config.keys_of(config.FewshotConfig)
    assert set(benchmark_nodes.BENCHMARK_KEYS) == config.keys_of(config.BenchmarkConfig)
    assert set(benchmark_nodes.GRID_KEYS) == config.keys_of(config.BenchmarkVariantConfig)
    assert set(pretrain_nodes.TRAINING_KEYS) <= config.keys_of(config.PretrainConfig)


def test_training_section_is_train_config_plus_work_dir() -> None:
    from cardiac_pipeline.model.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    adaptation = {"adaptation", "prior_correction", "cached"}  # how to adapt (model/recipe.py)
    expected = (fields - {"eval_batch_size"}) | {"work_dir"} | adaptation
    assert config.keys_of(config.TrainingConfig) == expected

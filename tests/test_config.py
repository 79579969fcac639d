"""Typed parameters: conf/base and the dataclasses agree; every section refuses unknown keys."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from cardiac_pipeline import config
from cardiac_pipeline.errors import UserError
from tests.conftest import conf_base_parameters


@pytest.fixture(scope="module")
def base_params() -> dict[str, Any]:
    return copy.deepcopy(conf_base_parameters())


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


def _key_problems(cls: type, conf: Any, path: str) -> list[str]:
    """Every field of ``cls`` (nested sections, variants and methods too) against conf."""
    if hasattr(cls, "from_conf"):  # a benchmark method: kind, pretrained, then its overrides
        return [f"{path}.{k}: missing" for k in ("kind", "pretrained") if k not in conf]
    hints = config.typing.get_type_hints(cls)
    fields = config.keys_of(cls)
    problems = [f"{path}.{k}: missing in conf/base" for k in sorted(fields - set(conf))]
    problems += [f"{path}.{k}: no such field" for k in sorted(set(conf) - fields)]
    for name in sorted(fields & set(conf)):
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            problems += _key_problems(hint, conf[name], f"{path}.{name}")
        elif config.typing.get_origin(hint) is dict:
            item = config.typing.get_args(hint)[1]
            if dataclasses.is_dataclass(item):
                for key, value in conf[name].items():
                    problems += _key_problems(item, value, f"{path}.{name}.{key}")
    return problems


def test_conf_base_sets_every_field_of_every_dataclass(base_params) -> None:
    """conf/base is the one place a value lives: a key it lacks or one no field reads fails."""
    assert _key_problems(config.ProjectConfig, base_params, "parameters") == []
    with_extra = _with(base_params, "training.lora.ranks", 4)
    assert _key_problems(config.ProjectConfig, with_extra, "p") == [
        "p.training.lora.ranks: no such field"
    ]
    without = copy.deepcopy(base_params)
    del without["evaluation"]["ci_level"]
    assert _key_problems(config.ProjectConfig, without, "p") == [
        "p.evaluation.ci_level: missing in conf/base"
    ]


def _with_defaults(cls: type) -> list[str]:
    found = []
    for item in dataclasses.fields(cls):
        if (
            item.default is not dataclasses.MISSING
            or item.default_factory is not dataclasses.MISSING
        ):
            found.append(f"{cls.__name__}.{item.name}")
        hint = config.typing.get_type_hints(cls)[item.name]
        if dataclasses.is_dataclass(hint):
            found += _with_defaults(hint)
    return found


def test_no_dataclass_field_restates_a_conf_default() -> None:
    from cardiac_pipeline.model.train import TrainConfig

    classes = [config.ProjectConfig, config.BenchmarkVariantConfig, config.Recipe, TrainConfig]
    assert [name for cls in classes for name in _with_defaults(cls)] == []


def test_required_keys_are_in_conf_base(base_params) -> None:
    config.build_config(base_params)  # raises on a missing required key
    with pytest.raises(UserError, match=r"'synthetic.root' is missing"):
        config.build_config(_with(base_params, "synthetic", {"generate": {}}))
    with pytest.raises(UserError, match=r"'training.lora' is missing"):
        params = copy.deepcopy(base_params)
        del params["training"]["lora"]
        config.build_config(params)


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
        ("training.epochs", 0, r"'training.epochs': must be >= 1, got 0"),
        ("training.optimizer", "sgd", r"'training': training.optimizer must be one of"),
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


def test_node_key_sets_come_from_the_dataclasses() -> None:
    from cardiac_pipeline.pipelines.pretrain import nodes as pretrain_nodes

    assert set(pretrain_nodes.TRAINING_KEYS) <= config.keys_of(config.PretrainConfig)


def test_training_section_is_train_config_plus_work_dir_and_adaptation(base_params) -> None:
    from cardiac_pipeline.model.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    adaptation = {"adaptation", "prior_correction", "cached", "lora"}  # model/adaptation.py
    expected = (fields - {"eval_batch_size"}) | {"work_dir"} | adaptation
    assert config.keys_of(config.TrainingConfig) == expected
    training = config.build_config(base_params).training
    loop = training.loop(eval_batch_size=3)
    assert (loop.epochs, loop.eval_batch_size) == (training.epochs, 3)
    assert training.cached_stage().loop(eval_batch_size=1).epochs == training.cached["epochs"]


def test_override_checks_and_merges_like_conf(base_params) -> None:
    training = config.build_config(base_params).training
    changed = config.override(training, {"lrs": {"head": 1.0}, "epochs": 5}, "x.training")
    assert changed.lrs == {**training.lrs, "head": 1.0} and changed.epochs == 5
    assert training.epochs != 5  # frozen: a new object
    with pytest.raises(UserError, match=r"'x.training.epochs': expected an integer"):
        config.override(training, {"epochs": "five"}, "x.training")
    with pytest.raises(UserError, match=r"'training.cached'.*'epoch'"):
        config.override(training, {"cached": {"epoch": 5}}, "x.training")


def test_a_section_is_typed_once_at_the_boundary(base_params) -> None:
    typed = config.section("clips", base_params["clips"])
    assert isinstance(typed, config.ClipsConfig) and config.section("clips", typed) is typed
    with pytest.raises(UserError, match=r"'clips.augment_pad' is missing"):
        config.section(
            "clips", {k: v for k, v in base_params["clips"].items() if k != "augment_pad"}
        )

"""Benchmark method definitions are checked before the first of many runs."""

from __future__ import annotations

import pytest

from cardiac_pipeline.config import BenchmarkMethodConfig
from cardiac_pipeline.model.benchmark import check_methods, layered_recipe
from tests.conftest import base_recipe


def _methods(**values: dict) -> dict[str, BenchmarkMethodConfig]:
    return {
        name: BenchmarkMethodConfig.from_conf(method, f"benchmark.methods.{name}")
        for name, method in values.items()
    }


def test_well_formed_methods_pass() -> None:
    methods = _methods(
        zero_shot={"kind": "zero_shot", "pretrained": True},
        no_echozoom={"kind": "cardiac_clip", "pretrained": True, "cardiac_clip": {"scales": [1]}},
        r2plus1d={
            "kind": "echonet_regressor",
            "pretrained": False,
            "evaluation": {"batch_size": 4},
        },
    )
    check_methods(methods, list(methods), base_recipe())


@pytest.mark.parametrize(
    ("method", "message"),
    [
        # the ablation's override misspelt: it would run the full model under its name
        ({"cardiacclip": {"scales": [1]}}, "did you mean 'cardiac_clip'"),
        ({"cardiac_clip": {"scale": [1]}}, "did you mean 'scales'"),
        ({"training": {"eval_batch_size": 4}}, "evaluation.batch_size"),
        ({"kind": "finetune"}, "'finetune' is not one of"),
        ({"pretrained": None}, "expected true or false"),
    ],
)
def test_a_bad_method_names_itself_and_the_problem(method: dict, message: str) -> None:
    with pytest.raises(ValueError, match=r"benchmark\.methods\.ablation") as raised:
        values = {"kind": "cardiac_clip", "pretrained": True, **method}
        check_methods(_methods(ablation=values), ["ablation"], base_recipe())
    assert message in str(raised.value)


def test_a_grid_method_without_a_definition_is_an_error() -> None:
    methods = _methods(linear_probe={"kind": "linear_probe", "pretrained": True})
    with pytest.raises(ValueError, match=r"\['linear_prob'\] are not defined"):
        check_methods(methods, ["linear_prob"], base_recipe())


def test_recipe_layers_apply_in_order_and_keep_what_they_do_not_name() -> None:
    base = base_recipe()
    grid = {"training": {"epochs": 2, "max_batches_per_epoch": 64}}
    quick = {"training": {"max_batches_per_epoch": 32, "cached": {"epochs": 30}}}
    quick["evaluation"] = {"n_clips": 3}
    recipe = layered_recipe(base, [("benchmark.recipe", grid), ("variant.recipe", quick)])
    assert (recipe.training.epochs, recipe.training.max_batches_per_epoch) == (2, 32)
    assert recipe.training.cached == {**base.training.cached, "epochs": 30}  # merged
    assert recipe.evaluation.n_clips == 3
    assert recipe.evaluation.batch_size == base.evaluation.batch_size
    assert recipe.clips == base.clips
    assert base.training.epochs != 2  # the base is not modified (frozen)
    assert layered_recipe(base, [("benchmark.recipe", None)]) == base


def test_a_recipe_layer_with_an_unknown_section_names_where() -> None:
    with pytest.raises(ValueError, match=r"benchmark\.variants\.quick\.recipe.*'trainig'"):
        layered_recipe(
            base_recipe(), [("benchmark.variants.quick.recipe", {"trainig": {"epochs": 1}})]
        )

"""Benchmark method definitions are checked before the first of many runs."""

from __future__ import annotations

import pytest

from cardiac_pipeline.model.benchmark import check_methods

BASE = {
    "backbone": {"name": "echo-vit-tiny", "pretrained": "pretrain"},
    "cardiac_clip": {"scales": [1, 2], "pooling": "attention"},
    "clips": {"frames": 4, "period": 2},
    "training": {"epochs": 1},
    "evaluation": {"n_clips": 1},
}


def test_well_formed_methods_pass() -> None:
    methods = {
        "zero_shot": {"kind": "zero_shot"},
        "no_echozoom": {
            "kind": "cardiac_clip",
            "pretrained": True,
            "cardiac_clip": {"scales": [1]},
        },
        "r2plus1d": {"kind": "echonet_regressor", "evaluation": {"batch_size": 4}},
    }
    check_methods(methods, list(methods), BASE)


@pytest.mark.parametrize(
    ("method", "message"),
    [
        # the ablation's override misspelt: it would run the full model under its name
        ({"kind": "cardiac_clip", "cardiacclip": {"scales": [1]}}, "did you mean 'cardiac_clip'"),
        ({"kind": "cardiac_clip", "cardiac_clip": {"scale": [1]}}, "did you mean 'scales'"),
        (
            {"kind": "echonet_regressor", "training": {"eval_batch_size": 4}},
            "evaluation.batch_size",
        ),
        ({"kind": "finetune"}, "unknown kind 'finetune'"),
    ],
)
def test_a_bad_method_names_itself_and_the_problem(method: dict, message: str) -> None:
    with pytest.raises(ValueError, match=r"benchmark\.methods\.ablation") as raised:
        check_methods({"ablation": method}, ["ablation"], BASE)
    assert message in str(raised.value)


def test_a_grid_method_without_a_definition_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"\['linear_prob'\] are not defined"):
        check_methods({"linear_probe": {"kind": "linear_probe"}}, ["linear_prob"], BASE)


def test_recipe_layers_apply_in_order_and_keep_what_they_do_not_name() -> None:
    from cardiac_pipeline.model.benchmark import layered_recipe

    grid = {"training": {"epochs": 2, "max_batches_per_epoch": 64}}
    quick = {"training": {"max_batches_per_epoch": 32}, "evaluation": {"n_clips": 2}}
    recipe = layered_recipe(BASE, [("benchmark.recipe", grid), ("variant.recipe", quick)])
    assert recipe["training"] == {"epochs": 2, "max_batches_per_epoch": 32}
    assert recipe["evaluation"] == {"n_clips": 2}
    assert recipe["clips"] == BASE["clips"]
    assert BASE["training"] == {"epochs": 1}  # the base is not modified
    assert layered_recipe(BASE, [("benchmark.recipe", None)]) == BASE


def test_a_recipe_layer_with_an_unknown_section_names_where() -> None:
    from cardiac_pipeline.model.benchmark import layered_recipe

    with pytest.raises(ValueError, match=r"benchmark\.variants\.quick\.recipe.*'trainig'"):
        layered_recipe(BASE, [("benchmark.variants.quick.recipe", {"trainig": {"epochs": 1}})])

"""``kedro run --pipeline benchmark``: zero-shot, linear probe, CardiacCLIP and its ablations,
and an EchoNet-style regressor on identical k-shot splits.

Namespace ``benchmark``: every split (``benchmark.splits.k1_seed0`` ...) and the frame
features of their videos; a zero-shot method is one model for every split
(``benchmark.zero_shot.predict``); then one namespace per split, ``benchmark.k1_seed0`` and
so on, with one node per method (``benchmark.k1_seed0.cardiac_clip`` trains and tests that
model) and the constant predictors; then every row combined and summarised.
``--params=benchmark.variant=quick`` runs the short version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kedro.pipeline import Node, Pipeline

from cardiac_pipeline.config import section
from cardiac_pipeline.pipelines.data import data_pipeline
from cardiac_pipeline.pipelines.fewshot.nodes import build_frame_features
from cardiac_pipeline.pipelines.grid import bound, frame_features_node, split_node

from .nodes import (
    combine_benchmark_tables,
    make_benchmark_split,
    predict_zero_shot,
    run_benchmark_method,
    score_constant_predictors,
    score_zero_shot,
    split_names,
    summarise_benchmark,
    variant_methods,
)

NAMESPACE = "benchmark"
RECIPE = [f"params:{s}" for s in ("backbone", "cardiac_clip", "clips", "training", "evaluation")]


def sample_split_node(name: str, splits: list[str], methods: list[str]) -> Node:
    """The k-shot split ``name`` (``k<k>_seed<seed>``) every method of the variant uses."""
    k, seed = name[1:].split("_seed")
    sample = bound(make_benchmark_split, k=int(k), seed=int(seed), splits=splits, methods=methods)
    return split_node(NAMESPACE, name, sample, ["video_index", "params:benchmark"], "split")


def method_node(method: str, kind: str, backbone: list[str]) -> Node:
    """One method on one split: a zero-shot model scored, or a model trained and tested."""
    if kind == "zero_shot":
        return Node(
            bound(score_zero_shot, method=method),
            inputs=["split", _zero_shot_input(method)],
            outputs=[method, f"{method}_predictions"],
            name=method,
        )
    return Node(
        bound(run_benchmark_method, method=method),
        inputs=["clip_store", "split", "params:benchmark", *RECIPE, "frame_features", *backbone],
        outputs=[method, f"{method}_predictions"],
        name=method,
    )


def _zero_shot_input(method: str) -> str:
    """A split's name for zero-shot ``method``'s predictions (``benchmark.<method>.predictions``)."""
    return f"{method}_model_predictions"


def split_pipeline(name: str, kinds: dict[str, str], pretraining: bool) -> Pipeline:
    """The constants and every method on split ``name``, in namespace ``benchmark.<name>``."""
    backbone = ["pretrained_backbone"] if pretraining else []
    constants = Node(
        score_constant_predictors,
        inputs="split",
        outputs=["constants", "constants_predictions"],
        name="constants",
    )
    pipe = Pipeline([constants, *(method_node(m, kind, backbone) for m, kind in kinds.items())])
    shared = {"clip_store", "pretrained_backbone", "frame_features"} & set(pipe.inputs())
    zero_shot = {
        _zero_shot_input(m): f"{NAMESPACE}.{m}.predictions"
        for m, kind in kinds.items()
        if kind == "zero_shot"
    }
    return Pipeline(
        pipe,
        namespace=f"{NAMESPACE}.{name}",
        inputs={**{s: s for s in shared}, **zero_shot},
        parameters={"params:benchmark", *RECIPE} & set(pipe.inputs()),
    )


def zero_shot_pipeline(method: str, backbone: list[str]) -> Pipeline:
    """A zero-shot method's TEST and VAL predictions, one model for every split."""
    return Pipeline(
        [
            Node(
                bound(predict_zero_shot, method=method),
                inputs=["clip_store", "video_index", "params:benchmark", *RECIPE, *backbone],
                outputs="predictions",
                name="predict",
            )
        ],
        namespace=f"{NAMESPACE}.{method}",
        inputs={"clip_store", "video_index", *backbone},
        parameters={"params:benchmark", *RECIPE},
    )


def summary_nodes(splits: list[str], methods: list[str]) -> list[Node]:
    """Every (split, method) row in one table, and the summary with paired differences."""
    rows = [f"{NAMESPACE}.{s}.{out}" for s in splits for out in ["constants", *methods]]
    combined = {
        "metrics": ("benchmark_metrics", rows),
        "predictions": ("benchmark_predictions", [f"{row}_predictions" for row in rows]),
    }
    nodes = [
        Node(
            combine_benchmark_tables,
            inputs=inputs,
            outputs=output,
            name=f"combine_{table}",
            namespace=NAMESPACE,
        )
        for table, (output, inputs) in combined.items()
    ]
    summarise = Node(
        summarise_benchmark,
        inputs=[
            "benchmark_metrics",
            "benchmark_predictions",
            "params:benchmark",
            "params:evaluation",
        ],
        outputs=[
            "benchmark_summary",
            "benchmark_table",
            "benchmark_mae_vs_k",
            "benchmark_paired_differences",
            "benchmark_paired_differences_table",
        ],
        name="summarise",
        namespace=NAMESPACE,
    )
    return [*nodes, summarise]


def create_pipeline(parameters: Mapping[str, Any]) -> Pipeline:
    """The pipeline of the benchmark variant in ``parameters`` (the run's, from the registry)."""
    benchmark = section("benchmark", parameters["benchmark"])
    splits, methods = split_names(benchmark), variant_methods(benchmark)
    missing = [m for m in methods if m not in benchmark.methods]
    if missing:
        raise ValueError(f"benchmark methods {missing} are not defined in benchmark.methods")
    kinds = {m: benchmark.methods[m].kind for m in methods}
    # methods with pretrained: true start from the pretrain checkpoint
    pretraining = any(benchmark.methods[m].pretrained for m in methods)
    backbone = ["pretrained_backbone"] if pretraining else []
    shared = Pipeline(
        [
            *(sample_split_node(s, splits, methods) for s in splits),
            frame_features_node(
                NAMESPACE,
                build_frame_features,
                [f"{NAMESPACE}.{s}.split" for s in splits],
                pretraining,
            ),
        ]
    )
    zero_shot = [zero_shot_pipeline(m, backbone) for m in methods if kinds[m] == "zero_shot"]
    per_split = sum((split_pipeline(s, kinds, pretraining) for s in splits), Pipeline([]))
    return (
        data_pipeline(parameters, pretraining=pretraining)
        + shared
        + Pipeline(zero_shot)
        + per_split
        + Pipeline(summary_nodes(splits, methods))
    )

"""``kedro run --pipeline benchmark``: zero-shot, linear probe, CardiacCLIP and its ablations,
and an EchoNet-style regressor on identical k-shot splits.

One namespaced pipeline per split, ``benchmark.k1_seed0`` and so on: its split, one node
per method (``benchmark.k1_seed0.cardiac_clip`` trains and tests that model), and the
constant predictors; a zero-shot method is one node (``benchmark.zero_shot``) scored on
every split. ``--params=benchmark.variant=quick`` runs the short version.
"""

from __future__ import annotations

from typing import Any

from kedro.pipeline import Node, Pipeline

from cardiac_pipeline.config import section
from cardiac_pipeline.pipelines.data import data_pipeline
from cardiac_pipeline.pipelines.fewshot.pipeline import (
    _across_namespaces,
    _bound,
    frame_features_pipeline,
)

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


def _split_pipeline(
    name: str, splits: list[str], methods: list[str], kinds: dict[str, str], pretraining: bool
) -> Pipeline:
    k, seed = name[1:].split("_seed")
    backbone = ["pretrained_backbone"] if pretraining else []
    nodes = [
        Node(
            _bound(make_benchmark_split, k=int(k), seed=int(seed), splits=splits, methods=methods),
            inputs=["video_index", "params:benchmark"],
            outputs="split",
            name="sample_split",
        ),
        Node(
            score_constant_predictors,
            inputs="split",
            outputs=["constants", "constants_predictions"],
            name="constants",
        ),
    ]
    for method in methods:
        if kinds[method] == "zero_shot":
            nodes.append(
                _across_namespaces(
                    lambda method=method: Node(
                        _bound(score_zero_shot, method=method),
                        inputs=["split", f"{NAMESPACE}.{method}.predictions"],
                        outputs=[method, f"{method}_predictions"],
                        name=method,
                    )
                )
            )
        else:
            nodes.append(
                Node(
                    _bound(run_benchmark_method, method=method),
                    inputs=[
                        "clip_store",
                        "split",
                        "params:benchmark",
                        *RECIPE,
                        "frame_features",
                        *backbone,
                    ],
                    outputs=[method, f"{method}_predictions"],
                    name=method,
                )
            )
    pipe = Pipeline(nodes)
    shared = {"video_index", "clip_store", "pretrained_backbone", "frame_features"}
    shared |= {f"{NAMESPACE}.{m}.predictions" for m in methods if kinds[m] == "zero_shot"}
    return Pipeline(
        pipe,
        namespace=f"{NAMESPACE}.{name}",
        inputs=shared & set(pipe.inputs()),
        parameters={"params:benchmark", *RECIPE},
    )


def create_pipeline(parameters: dict[str, Any] | None = None, **kwargs) -> Pipeline:
    if parameters is None:
        from cardiac_pipeline.pipeline_registry import project_parameters

        parameters = project_parameters()
    benchmark = section("benchmark", parameters["benchmark"])
    splits, methods = split_names(benchmark), variant_methods(benchmark)
    missing = [m for m in methods if m not in benchmark.methods]
    if missing:
        raise ValueError(f"benchmark methods {missing} are not defined in benchmark.methods")
    kinds = {m: benchmark.methods[m].kind for m in methods}
    # methods with pretrained: true start from the pretrain checkpoint
    pretraining = any(benchmark.methods[m].pretrained for m in methods)
    backbone = ["pretrained_backbone"] if pretraining else []
    zero_shot = [
        Pipeline(
            [
                Node(
                    _bound(predict_zero_shot, method=m),
                    inputs=["clip_store", "video_index", "params:benchmark", *RECIPE, *backbone],
                    outputs="predictions",
                    name="predict",
                )
            ],
            namespace=f"{NAMESPACE}.{m}",
            inputs={"clip_store", "video_index", *backbone},
            parameters={"params:benchmark", *RECIPE},
        )
        for m in methods
        if kinds[m] == "zero_shot"
    ]
    per_split = sum(
        (_split_pipeline(s, splits, methods, kinds, pretraining) for s in splits), Pipeline([])
    )
    rows = [f"{NAMESPACE}.{s}.{out}" for s in splits for out in ["constants", *methods]]
    summary = Pipeline(
        [
            _across_namespaces(
                lambda: Node(
                    combine_benchmark_tables,
                    inputs=rows,
                    outputs="benchmark_metrics",
                    name="combine_benchmark_metrics",
                )
            ),
            _across_namespaces(
                lambda: Node(
                    combine_benchmark_tables,
                    inputs=[f"{row}_predictions" for row in rows],
                    outputs="benchmark_predictions",
                    name="combine_benchmark_predictions",
                )
            ),
            Node(
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
                name="summarise_benchmark",
            ),
        ]
    )
    features = frame_features_pipeline(
        [f"{NAMESPACE}.{s}.split" for s in splits], pretraining=pretraining
    )
    return (
        data_pipeline(parameters, pretraining=pretraining)
        + features
        + Pipeline(zero_shot)
        + per_split
        + summary
    )

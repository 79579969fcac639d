"""``kedro run --pipeline fewshot``: the whole method on the configured dataset.

(synthetic, for the default dataset) -> ingestion -> preprocessing -> (pretraining, for
``backbone.pretrained: pretrain``) -> one namespaced pipeline per model, ``fewshot.k1_seed0``
and so on (its k-shot split, CardiacCLIP training, test evaluation) -> every model's metrics
combined and summarised over seeds. Each model is its own node, so ParallelRunner trains
them side by side and ``--namespaces=fewshot.k1_seed0`` trains one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial, update_wrapper
from typing import Any

from kedro.pipeline import Node, Pipeline

from cardiac_pipeline.pipelines.data import data_pipeline, starts_from_pretraining

from .nodes import (
    USER_SPLIT,
    build_frame_features,
    combine_fewshot_tables,
    evaluate_fewshot_model,
    make_k_shot_split,
    model_names,
    predict_zero_shot_reference,
    read_user_split,
    summarise_fewshot,
    train_fewshot_model,
)

NAMESPACE = "fewshot"
ZERO_SHOT_REFERENCE = "fewshot_zero_shot_predictions"
SHARED_INPUTS = {
    "video_index",
    "clip_store",
    "pretrained_backbone",
    "frame_features",
    ZERO_SHOT_REFERENCE,
}
RECIPE_PARAMETERS = ("backbone", "cardiac_clip", "clips", "training", "evaluation")


def _across_namespaces(node: Callable[[], Node]) -> Node:
    """A node reading other namespaces' datasets by their full (dotted) names.

    Kedro warns about dots in dataset names, meant for names written by hand; these are the
    names its namespacing made.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="One or more dataset names contain")
        return node()


def _bound(func, **kwargs):
    """``func`` with keyword arguments fixed, keeping its name and docs (kedro viz shows them)."""
    return update_wrapper(partial(func, **kwargs), func)


def frame_features_pipeline(splits: list[str], pretraining: bool) -> Pipeline:
    """The one node that builds or updates the frame-feature store for the videos of
    ``splits`` (shared by the fewshot and benchmark pipelines)."""
    return Pipeline(
        [
            _across_namespaces(
                lambda: Node(
                    _bound(build_frame_features, with_checkpoint=pretraining),
                    inputs=[
                        "clip_store",
                        "frame_features_folder",
                        "params:backbone",
                        "params:cardiac_clip",
                        "params:clips",
                        "params:training",
                        *(["pretrained_backbone"] if pretraining else []),
                        *splits,
                    ],
                    outputs="frame_features",
                    name="build_frame_features",
                )
            )
        ]
    )


def model_pipeline(name: str, built: list[str], pretraining: bool) -> Pipeline:
    """Split, training and evaluation of one model, in namespace ``fewshot.<name>``."""
    if name == USER_SPLIT:
        sample = _bound(read_user_split, built=built)
    else:
        k, seed = name[1:].split("_seed")
        sample = _bound(make_k_shot_split, k=int(k), seed=int(seed), built=built)
    recipe = [f"params:{section}" for section in RECIPE_PARAMETERS]
    nodes = Pipeline(
        [
            Node(
                sample,
                inputs=["video_index", "params:fewshot"],
                outputs="k_shot_split",
                name="sample_split",
            ),
            Node(
                train_fewshot_model,
                inputs=["clip_store", "k_shot_split", *recipe, "frame_features"]
                + (["pretrained_backbone"] if pretraining else []),
                outputs="model",
                name="train",
            ),
            Node(
                evaluate_fewshot_model,
                inputs=[
                    "clip_store",
                    "video_index",
                    "k_shot_split",
                    "model",
                    "params:evaluation",
                    ZERO_SHOT_REFERENCE,
                    "frame_features",
                ],
                outputs=["predictions", "metrics", "plots"],
                name="evaluate",
            ),
        ]
    )
    return Pipeline(
        nodes,
        namespace=f"{NAMESPACE}.{name}",
        inputs=SHARED_INPUTS & set(nodes.inputs()),
        parameters={"params:fewshot", *recipe},
    )


def create_pipeline(parameters: dict[str, Any] | None = None, **kwargs) -> Pipeline:
    if parameters is None:
        from cardiac_pipeline.pipeline_registry import project_parameters

        parameters = project_parameters()
    names = model_names(parameters["fewshot"])
    pretraining = starts_from_pretraining(parameters["backbone"])
    models = sum((model_pipeline(name, names, pretraining) for name in names), Pipeline([]))
    backbone = ["pretrained_backbone"] if pretraining else []
    splits = [f"{NAMESPACE}.{name}.k_shot_split" for name in names]
    features = frame_features_pipeline(splits, pretraining)
    summary = Pipeline(
        [
            _across_namespaces(
                lambda: Node(
                    predict_zero_shot_reference,
                    inputs=[
                        "clip_store",
                        f"{NAMESPACE}.{names[0]}.k_shot_split",
                        "params:backbone",
                        "params:clips",
                        "params:evaluation",
                        *backbone,
                    ],
                    outputs=ZERO_SHOT_REFERENCE,
                    name="predict_zero_shot_reference",
                )
            ),
            _across_namespaces(
                lambda: Node(
                    combine_fewshot_tables,
                    inputs=[f"{NAMESPACE}.{name}.metrics" for name in names],
                    outputs="fewshot_metrics",
                    name="combine_metrics",
                )
            ),
            _across_namespaces(
                lambda: Node(
                    combine_fewshot_tables,
                    inputs=[f"{NAMESPACE}.{name}.predictions" for name in names],
                    outputs="fewshot_test_predictions",
                    name="combine_predictions",
                )
            ),
            Node(
                summarise_fewshot,
                inputs=["fewshot_metrics", "fewshot_test_predictions", "params:evaluation"],
                outputs=["fewshot_summary", "fewshot_summary_table", "fewshot_mae_vs_k"],
                name="summarise_over_seeds",
            ),
        ]
    )
    return data_pipeline(parameters, pretraining=pretraining) + features + models + summary

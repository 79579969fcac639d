"""``kedro run --pipeline fewshot``: the whole method on the configured dataset.

(synthetic, for the default dataset) -> ingestion -> preprocessing -> (pretraining, for
``backbone.pretrained: pretrain``) -> namespace ``fewshot``: every model's k-shot split
(``fewshot.splits.k1_seed0`` ...), the frame features of their videos and the zero-shot
reference, then one namespace per model, ``fewshot.k1_seed0`` and so on (CardiacCLIP
training, test evaluation), then every model's metrics combined and summarised over seeds.
Each model is its own node, so ParallelRunner trains them side by side and
``--namespaces=fewshot.k1_seed0`` trains one (on the split, features and reference that
an earlier run wrote).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kedro.pipeline import Node, Pipeline

from cardiac_pipeline.pipelines.data import data_pipeline, starts_from_pretraining
from cardiac_pipeline.pipelines.grid import bound, frame_features_node, split_node

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
    "clip_store",
    "video_index",
    "pretrained_backbone",
    "frame_features",
    ZERO_SHOT_REFERENCE,
}
RECIPE_PARAMETERS = ("backbone", "cardiac_clip", "clips", "training", "evaluation")


def sample_split_node(name: str, built: list[str]) -> Node:
    """The split of model ``name``: sampled for a (k, seed), or the user's split file."""
    if name == USER_SPLIT:
        sample = bound(read_user_split, built=built)
    else:
        k, seed = name[1:].split("_seed")
        sample = bound(make_k_shot_split, k=int(k), seed=int(seed), built=built)
    return split_node(NAMESPACE, name, sample, ["video_index", "params:fewshot"], "k_shot_split")


def model_pipeline(name: str, pretraining: bool) -> Pipeline:
    """Training and evaluation of one model on its split, in namespace ``fewshot.<name>``."""
    recipe = [f"params:{section}" for section in RECIPE_PARAMETERS]
    nodes = Pipeline(
        [
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
        parameters=set(recipe),
    )


def zero_shot_reference_node(first_split: str, pretraining: bool) -> Node:
    """The zero-shot CLIP of the run's backbone on the TEST videos every split shares."""
    return Node(
        predict_zero_shot_reference,
        inputs=[
            "clip_store",
            first_split,
            "params:backbone",
            "params:clips",
            "params:evaluation",
            *(["pretrained_backbone"] if pretraining else []),
        ],
        outputs=ZERO_SHOT_REFERENCE,
        name="predict_zero_shot_reference",
        namespace=NAMESPACE,
    )


def summary_nodes(names: list[str]) -> list[Node]:
    """Every model's metrics and predictions in one table each, summarised over seeds."""
    combined = {"metrics": "fewshot_metrics", "predictions": "fewshot_test_predictions"}
    nodes = [
        Node(
            combine_fewshot_tables,
            inputs=[f"{NAMESPACE}.{name}.{table}" for name in names],
            outputs=output,
            name=f"combine_{table}",
            namespace=NAMESPACE,
        )
        for table, output in combined.items()
    ]
    summarise = Node(
        summarise_fewshot,
        inputs=["fewshot_metrics", "fewshot_test_predictions", "params:evaluation"],
        outputs=["fewshot_summary", "fewshot_summary_table", "fewshot_mae_vs_k"],
        name="summarise_over_seeds",
        namespace=NAMESPACE,
    )
    return [*nodes, summarise]


def create_pipeline(parameters: Mapping[str, Any]) -> Pipeline:
    """The pipeline of the grid in ``parameters`` (the run's, from the registry)."""
    names = model_names(parameters["fewshot"])
    pretraining = starts_from_pretraining(parameters["backbone"])
    splits = [f"{NAMESPACE}.{name}.k_shot_split" for name in names]
    shared = Pipeline(
        [
            *(sample_split_node(name, names) for name in names),
            frame_features_node(NAMESPACE, build_frame_features, splits, pretraining),
            zero_shot_reference_node(splits[0], pretraining),
        ]
    )
    models = sum((model_pipeline(name, pretraining) for name in names), Pipeline([]))
    return (
        data_pipeline(parameters, pretraining=pretraining)
        + shared
        + models
        + Pipeline(summary_nodes(names))
    )

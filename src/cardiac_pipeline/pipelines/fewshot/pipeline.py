"""``kedro run --pipeline fewshot``: the whole method on the configured dataset.

synthetic (only when absent) -> ingestion -> preprocessing -> k-shot splits ->
CardiacCLIP training per (k, seed) -> test evaluation -> summary over seeds. The pretrain
pipeline runs first (a no-op once its checkpoint is current): with the default
``backbone.pretrained: pretrain`` CardiacCLIP adapts that source-site CLIP.
"""

from kedro.pipeline import Node, Pipeline

from cardiac_pipeline.pipelines import ingestion, preprocessing, pretrain, synthetic

from .nodes import (
    build_frame_features,
    evaluate_fewshot_models,
    make_k_shot_splits,
    summarise_fewshot,
    train_fewshot_models,
)


def frame_features_pipeline(splits: str) -> Pipeline:
    """The one node that builds/updates the frame-feature store for the videos of ``splits``
    (shared by the fewshot and benchmark pipelines)."""
    return Pipeline(
        [
            Node(
                build_frame_features,
                inputs=[
                    "clip_store",
                    splits,
                    "params:backbone",
                    "params:cardiac_clip",
                    "params:clips",
                    "params:training",
                    "pretrained_backbone",
                ],
                outputs="frame_features",
                name=f"build_frame_features_{splits}",
            )
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    method = Pipeline(
        [
            Node(
                make_k_shot_splits,
                inputs=["video_index", "params:fewshot"],
                outputs="k_shot_splits",
                name="sample_k_shot_splits",
            ),
            Node(
                train_fewshot_models,
                inputs=[
                    "clip_store",
                    "k_shot_splits",
                    "params:backbone",
                    "params:cardiac_clip",
                    "params:clips",
                    "params:training",
                    "params:evaluation",
                    "pretrained_backbone",
                    "frame_features",
                ],
                outputs="fewshot_models",
                name="train_cardiac_clip",
            ),
            Node(
                evaluate_fewshot_models,
                inputs=[
                    "clip_store",
                    "video_index",
                    "k_shot_splits",
                    "fewshot_models",
                    "params:evaluation",
                    "frame_features",
                ],
                outputs=["fewshot_predictions", "fewshot_metrics", "fewshot_plots"],
                name="evaluate_on_test",
            ),
            Node(
                summarise_fewshot,
                inputs="fewshot_metrics",
                outputs=["fewshot_summary", "fewshot_summary_table", "fewshot_mae_vs_k"],
                name="summarise_over_seeds",
            ),
        ]
    )
    return (
        frame_features_pipeline("k_shot_splits")
        + synthetic.create_pipeline()
        + ingestion.create_pipeline()
        + preprocessing.create_pipeline()
        + pretrain.create_pipeline()
        + method
    )

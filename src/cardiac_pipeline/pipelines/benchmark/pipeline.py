"""``kedro run --pipeline benchmark``: zero-shot, linear probe, CardiacCLIP and its ablations,
and an EchoNet-style regressor on identical k-shot splits.

``--params=benchmark.variant=quick`` runs the short version."""

from kedro.pipeline import Node, Pipeline

from cardiac_pipeline.pipelines import ingestion, preprocessing, pretrain, synthetic
from cardiac_pipeline.pipelines.fewshot.pipeline import frame_features_pipeline

from .nodes import make_benchmark_splits, run_benchmark, summarise_benchmark


def create_pipeline(**kwargs) -> Pipeline:
    method = Pipeline(
        [
            Node(
                make_benchmark_splits,
                inputs=["video_index", "params:benchmark"],
                outputs="benchmark_splits",
                name="sample_benchmark_splits",
            ),
            Node(
                run_benchmark,
                inputs=[
                    "clip_store",
                    "benchmark_splits",
                    "pretrained_backbone",
                    "params:benchmark",
                    "params:backbone",
                    "params:cardiac_clip",
                    "params:clips",
                    "params:training",
                    "params:evaluation",
                    "frame_features",
                ],
                outputs="benchmark_metrics",
                name="run_benchmark_methods",
            ),
            Node(
                summarise_benchmark,
                inputs="benchmark_metrics",
                outputs=["benchmark_summary", "benchmark_table", "benchmark_mae_vs_k"],
                name="summarise_benchmark",
            ),
        ]
    )
    return (
        frame_features_pipeline("benchmark_splits")
        + synthetic.create_pipeline()
        + ingestion.create_pipeline()
        + preprocessing.create_pipeline()
        + pretrain.create_pipeline()
        + method
    )

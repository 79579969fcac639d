"""``kedro run --pipeline ingestion``: FileList + videos -> validated index and rejects."""

from kedro.pipeline import Node, Pipeline

from .nodes import ingest_echonet


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                ingest_echonet,
                inputs=["echonet_raw", "params:ingestion"],
                outputs=["video_index", "video_rejects"],
                name="ingest_echonet",
            )
        ]
    )

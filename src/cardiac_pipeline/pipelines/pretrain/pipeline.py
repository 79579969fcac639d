"""``kedro run --pipeline pretrain``: source-site corpus -> clip store -> pretrained backbone.

The checkpoint (``data/06_models/pretrained_backbone.pt``) loads with
``create_backbone(arch, pretrained=path)``; set ``backbone.pretrained`` to it for few-shot.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    ingest_pretrain_corpus,
    report_pretraining,
    request_pretrain_clip_store,
    request_pretrain_corpus,
    request_pretraining,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                request_pretrain_corpus,
                inputs="params:pretrain",
                outputs="pretrain_raw",
                name="generate_pretrain_corpus",
            ),
            Node(
                ingest_pretrain_corpus,
                inputs=["pretrain_raw", "params:ingestion"],
                outputs=["pretrain_video_index", "pretrain_video_rejects"],
                name="ingest_pretrain_corpus",
            ),
            Node(
                request_pretrain_clip_store,
                inputs=["pretrain_video_index", "pretrain_raw", "params:preprocessing"],
                outputs="pretrain_clip_store",
                name="build_pretrain_clip_store",
            ),
            Node(
                request_pretraining,
                inputs=[
                    "pretrain_clip_store",
                    "pretrain_video_index",
                    "pretrain_raw",
                    "params:pretrain",
                    "params:preprocessing",
                ],
                outputs="pretrained_backbone",
                name="pretrain_backbone",
            ),
            Node(
                report_pretraining,
                inputs="pretrained_backbone",
                outputs="pretrain_history",
                name="report_pretraining",
            ),
        ]
    )

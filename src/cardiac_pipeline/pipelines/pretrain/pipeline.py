"""``kedro run --pipeline pretrain``: source-site corpus -> clip store -> pretrained backbone.

The checkpoint (``data/06_models/pretrained_backbone.pt``) loads with
``create_backbone(arch, pretrained=path)``; set ``backbone.pretrained`` to it for few-shot.
Each step skips work already done: a current corpus is not regenerated, decoded videos
are not decoded again, a config pretrained before is restored from the archive.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    decode_pretrain_clip_store,
    generate_pretrain_corpus,
    ingest_pretrain_corpus,
    pretrain_backbone,
    report_pretraining,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                generate_pretrain_corpus,
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
                decode_pretrain_clip_store,
                inputs=[
                    "pretrain_video_index",
                    "pretrain_raw",
                    "params:preprocessing",
                    "pretrain_clip_store_folder",
                ],
                outputs="pretrain_clip_store",
                name="build_pretrain_clip_store",
            ),
            Node(
                pretrain_backbone,
                inputs=[
                    "pretrain_clip_store",
                    "pretrain_video_index",
                    "pretrain_raw",
                    "params:pretrain",
                    "params:preprocessing",
                    "pretrained_backbones",
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

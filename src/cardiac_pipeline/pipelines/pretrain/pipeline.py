"""``kedro run --pipeline pretrain``: source-site corpus (a clip store) -> pretrained backbone.

The checkpoint (``data/06_models/pretrained_backbone.pt``) loads with
``create_backbone(arch, pretrained=path)``; set ``backbone.pretrained`` to it for few-shot.
Each step skips work already done: a current corpus is not regenerated, a config
pretrained before is restored from the archive.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    generate_pretrain_corpus,
    open_pretrain_corpus,
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
                open_pretrain_corpus,
                inputs="pretrain_raw",
                outputs=["pretrain_clip_store", "pretrain_video_index"],
                name="open_pretrain_corpus",
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

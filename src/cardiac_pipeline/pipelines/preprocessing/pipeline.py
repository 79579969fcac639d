"""``kedro run --pipeline preprocessing``: decode each usable video once into the clip store."""

from kedro.pipeline import Node, Pipeline

from .nodes import decode_clip_store


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                decode_clip_store,
                inputs=[
                    "video_index",
                    "params:echonet_root",
                    "params:preprocessing",
                    "clip_store_folder",
                ],
                outputs="clip_store",
                name="build_clip_store",
            )
        ]
    )

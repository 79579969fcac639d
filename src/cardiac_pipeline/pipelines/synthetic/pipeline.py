"""``kedro run --pipeline synthetic``: write the embedded EchoNet-format dataset."""

from kedro.pipeline import Node, Pipeline

from .nodes import request_synthetic_dataset


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                request_synthetic_dataset,
                inputs=["params:echonet_root", "params:synthetic"],
                outputs="echonet_raw",
                name="generate_synthetic_echonet",
            )
        ]
    )

"""``kedro run --pipeline synthetic``: write the embedded EchoNet-format dataset.

It writes only ``synthetic.root`` (``synthetic_echonet`` in the catalog), and only while
``echonet_root`` is that folder: never the folder a user points at. fewshot and benchmark
include it only then.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import generate_synthetic_echonet


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                generate_synthetic_echonet,
                inputs=["params:echonet_root", "params:synthetic"],
                outputs="synthetic_echonet",
                name="generate_synthetic_echonet",
            )
        ]
    )

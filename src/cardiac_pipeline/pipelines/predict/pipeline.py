"""``kedro run --pipeline predict --params=predict.input_dir=/videos[,predict.model=...]``.

folder of videos -> per-video LVEF table + unreadable files -> HTML report.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import predict_input_folder, report_predictions


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                predict_input_folder,
                inputs="params:predict",
                outputs=["predictions", "prediction_failures", "prediction_details"],
                name="predict_lvef_for_folder",
            ),
            Node(
                report_predictions,
                inputs=[
                    "predictions",
                    "prediction_failures",
                    "prediction_details",
                    "params:predict",
                ],
                outputs="predict_report",
                name="report_predictions",
            ),
        ]
    )

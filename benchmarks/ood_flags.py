"""How often predict flags a video out of distribution: held-out target-site TEST videos
(in distribution: about 1% should be) against videos of the other synthetic site (source).

For each model of the newest fewshot run (or the checkpoint given) it predicts, exactly as
``kedro run --pipeline predict`` does (``model.predict.predict_folder``), the TEST videos of
the embedded dataset and a few dozen source-site videos that it generates once with the
project's generator (EchoNet format, full-length videos, seeds no other dataset uses), and
prints the share of each that is flagged. Needs a fewshot run first. From the project root:

    python benchmarks/ood_flags.py                        # every model of the newest run
    python benchmarks/ood_flags.py --model data/06_models/fewshot_models/<v>/fewshot_models/k1_seed0.pt
    python benchmarks/ood_flags.py --source-videos 96 --csv ood_flags.csv

The synthetic sites are a phantom: the figures say how the flag behaves on that shift.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pandas as pd

from cardiac_pipeline.echo import synthetic
from cardiac_pipeline.model import recipe
from cardiac_pipeline.model.predict import default_checkpoint, predict_folder


def _checkpoints(model: Path) -> list[Path]:
    """The checkpoint given, or every checkpoint of the newest run under a models folder."""
    if model.is_file():
        return [model]
    newest = default_checkpoint(model)[0].parent
    return sorted(newest.glob("*.pt"))


def _source_videos(root: Path, n: int, seed: int) -> Path:
    """``root/Videos``: ``n`` source-site TEST videos, generated unless already there (one
    worker: the folder's marker records every generation parameter)."""
    params = {"n_train": 0, "n_val": 0, "n_test": n, "seed": seed, "site": "source"}
    params |= {"workers": 1, "progress": True}
    if not synthetic.is_current(root, params):
        staged = synthetic.stage_dataset(root, params)
        if root.exists():
            import shutil

            shutil.rmtree(root)
        staged.rename(root)
    return root / "Videos"


def _test_videos(echonet: Path, into: Path) -> Path:
    """A folder of links to the dataset's TEST videos (predict reads a whole folder)."""
    files = pd.read_csv(echonet / "FileList.csv")
    for name in files.loc[files["Split"].str.upper() == "TEST", "FileName"]:
        os.symlink((echonet / "Videos" / f"{name}.avi").resolve(), into / f"{name}.avi")
    return into


def _flagged(folder: Path, checkpoint: dict, n_clips: int) -> tuple[int, int, float]:
    """(flagged, predicted, median percentile) of a folder's videos."""
    predictions, _, _ = predict_folder(folder, checkpoint, n_clips=n_clips, device="cpu")
    flags = predictions["out_of_distribution"]
    if flags.isna().all():
        raise SystemExit("this model has no out-of-distribution description: rerun fewshot")
    return int(flags.sum()), len(predictions), float(predictions["ood_percentile"].median())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("data/06_models/fewshot_models"))
    parser.add_argument("--echonet", type=Path, default=Path("data/01_raw/echonet_synthetic"))
    parser.add_argument("--source-root", type=Path, default=Path("data/01_raw/echonet_source_ood"))
    parser.add_argument("--source-videos", type=int, default=48)
    parser.add_argument("--source-seed", type=int, default=2029)
    parser.add_argument("--n-clips", type=int, default=2)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()

    source = _source_videos(args.source_root, args.source_videos, args.source_seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ood-test-") as tmp:
        target = _test_videos(args.echonet, Path(tmp))
        for path in _checkpoints(args.model):
            checkpoint = recipe.load_checkpoint(path)
            t_flag, t_n, t_pct = _flagged(target, checkpoint, args.n_clips)
            s_flag, s_n, s_pct = _flagged(source, checkpoint, args.n_clips)
            described = checkpoint["ood"]
            rows.append(
                {
                    "model": path.stem,
                    "n_calibration": int(described["n"]),
                    "expected_rate": float(described["expected_flag_rate"]),
                    "target_flagged": t_flag,
                    "target_n": t_n,
                    "target_share": t_flag / t_n,
                    "target_median_pct": t_pct,
                    "source_flagged": s_flag,
                    "source_n": s_n,
                    "source_share": s_flag / s_n,
                    "source_median_pct": s_pct,
                }
            )
            print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format="%.3f"), flush=True)
    table = pd.DataFrame(rows)
    pooled = {
        "model": "all (pooled)",
        "target_flagged": table["target_flagged"].sum(),
        "target_n": table["target_n"].sum(),
        "source_flagged": table["source_flagged"].sum(),
        "source_n": table["source_n"].sum(),
    }
    pooled["target_share"] = pooled["target_flagged"] / pooled["target_n"]
    pooled["source_share"] = pooled["source_flagged"] / pooled["source_n"]
    table = pd.concat([table, pd.DataFrame([pooled])], ignore_index=True)
    print("\nShare of videos flagged out_of_distribution (target: held-out TEST, in distribution)")
    print(table.to_string(index=False, float_format="%.3f", na_rep=""))
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()

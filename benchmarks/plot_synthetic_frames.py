"""Figure of ED and ES frames of generated synthetic echo videos, with their traced LV.

Usage: python benchmarks/plot_synthetic_frames.py [--out docs/synthetic_frames.png]

Rows: end-diastole, end-systole (as written to the AVI), and end-systole again with the
ED (cyan) and ES (orange) method-of-discs tracings that give the FileList EF. Columns: a
few videos of the default ``target`` site, then two of the ``source`` (pretraining) site.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cardiac_pipeline.echo.synthetic import synthesize_video  # noqa: E402


def _outline(tracing) -> np.ndarray:
    rows = tracing.rows()
    polygon = np.concatenate([rows[1:, :2], rows[1:, 2:][::-1], rows[1:2, :2]])
    return polygon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/synthetic_frames.png")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--target", type=int, default=5, help="videos of the target site")
    parser.add_argument("--source", type=int, default=2, help="videos of the source site")
    args = parser.parse_args()

    videos = [
        ("target", synthesize_video(args.seed, "TEST", i, "target")) for i in range(args.target)
    ]
    videos += [
        ("source", synthesize_video(args.seed, "TEST", i, "source")) for i in range(args.source)
    ]
    fig, axes = plt.subplots(3, len(videos), figsize=(2.3 * len(videos), 7.4), squeeze=False)
    for col, (site, video) in enumerate(videos):
        ed, es = video.frames[video.ed_frame], video.frames[video.es_frame]
        axes[0, col].imshow(ed, cmap="gray", vmin=0, vmax=255)
        axes[0, col].set_title(
            f"{site}: EF {video.ef:.0f}%\n{video.params.heart_rate_bpm:.0f} bpm, {video.fps} fps",
            fontsize=9,
        )
        axes[1, col].imshow(es, cmap="gray", vmin=0, vmax=255)
        axes[2, col].imshow(es, cmap="gray", vmin=0, vmax=255)
        for tracing, colour in ((video.ed_tracing, "cyan"), (video.es_tracing, "orange")):
            outline = _outline(tracing)
            axes[2, col].plot(outline[:, 0], outline[:, 1], color=colour, lw=0.8)
            (ax, ay), (bx, by) = tracing.long_axis
            axes[2, col].plot([ax, bx], [ay, by], color=colour, lw=0.6, ls="--")
        for row in range(3):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    axes[0, 0].set_ylabel("end-diastole")
    axes[1, 0].set_ylabel("end-systole")
    axes[2, 0].set_ylabel("ES + tracings\n(ED cyan, ES orange)")
    fig.suptitle("Synthetic EchoNet-format apical-4-chamber videos (112x112)", fontsize=11)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

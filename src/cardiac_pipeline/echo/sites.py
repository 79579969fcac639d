"""Acquisition sites of the synthetic echo phantom: one named style of scanner, settings and
patients each.

A ``Site`` holds the ranges every per-video draw comes from (uniform over ``(low, high)``
unless a field says otherwise). ``target`` is the default embedded dataset and mimics
EchoNet-Dynamic (EF mostly 50-70 with a left tail, 50 fps, narrow sector); ``source`` is a
clearly different clinic (wider sector, brighter and blurrier images, coarser speckle, a
zoomed-in heart, 30 fps and a broader EF distribution) used for pretraining, so that the
few-shot stage on ``target`` faces a real domain shift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Range = tuple[float, float]


@dataclass(frozen=True)
class Site:
    """A named acquisition style: the distributions the phantom draws each video from."""

    name: str
    # --- patients ---------------------------------------------------------------------
    # EF mixture of normals: (weight, mean, sd) per component, truncated to ef_range.
    ef_components: tuple[tuple[float, float, float], ...] = ((0.8, 61.0, 6.0), (0.2, 38.0, 12.0))
    ef_range: Range = (7.0, 92.0)
    # One TRAIN video per integer EF level in this range (inclusive), so that k-shot
    # sampling per level finds every level in a TRAIN of a few hundred videos; None: off.
    train_coverage_levels: tuple[int, int] | None = (10, 90)
    heart_rate_bpm: tuple[float, float] = (75.0, 15.0)  # mean, sd of a normal ...
    heart_rate_range: Range = (45.0, 130.0)  # ... truncated here
    heart_rate_variability: float = 0.03  # sd of beat length relative to the mean beat
    beat_ef_sd: float = 1.2  # beat-to-beat EF variation (EF points)
    beat_edv_sd: float = 0.02  # beat-to-beat EDV variation (relative)
    lv_length_px: float = 50.0  # LV length at ED for heart scale 1 and zoom 1 (pixels)
    heart_scale_sd: float = 0.11  # sd of log heart size (beside the remodelling shift)
    remodelling: float = 1.0  # EF-linked LV dilation/sphericity/thinning (0: none)
    lv_sphericity: Range = (0.5, 0.68)  # ED cavity diameter / length
    longitudinal_share: Range = (0.15, 0.3)  # exponent: length shrinks as volume ** share
    wall_thickness: Range = (0.38, 0.55)  # ED wall thickness / ED cavity half-width
    filling_early_share: Range = (0.62, 0.85)  # share of filling done by the E wave
    rv_area_change: Range = (0.25, 0.45)  # RV lateral shortening over the cycle
    la_size: Range = (0.8, 1.25)  # LA size relative to normal
    la_pulsation: Range = (0.08, 0.18)  # LA linear size change over the cycle
    # --- scanner and sonographer ----------------------------------------------------------
    sector_half_angle_deg: Range = (42.0, 46.0)
    sector_radius_px: Range = (104.0, 122.0)  # fan depth in pixels from its apex
    zoom: Range = (0.88, 1.12)  # imaging depth: scales the heart in pixels
    apex_depth_px: Range = (7.0, 17.0)  # LV apex below the fan apex
    apex_lateral_px: Range = (-4.0, 7.0)  # LV apex right of the frame centre
    axis_tilt_deg: Range = (8.0, 24.0)  # LV long axis from vertical, base to the right
    heart_motion_px: Range = (0.3, 1.5)  # whole-heart rocking and breathing amplitude
    gain_db: Range = (-4.0, 4.0)
    dynamic_range_db: Range = (42.0, 54.0)
    contrast_gamma: Range = (0.85, 1.25)
    speckle_strength: Range = (0.75, 1.0)  # 1 = fully developed (Rayleigh) speckle
    speckle_size_px: Range = (0.6, 1.0)  # granule sd, axial; lateral is 1.6x
    speckle_correlation: Range = (0.6, 0.85)  # frame-to-frame at 50 fps
    blur_px: Range = (0.5, 0.9)
    attenuation: Range = (0.4, 1.2)  # depth fall-off left after TGC
    noise_floor: Range = (0.0008, 0.003)  # electronic noise: greys the blood pool
    apical_clutter: Range = (0.0, 0.25)  # near-field haze over the apex
    border_roughness_px: Range = (0.3, 0.8)  # irregular endocardium and epicardium
    dropout_blobs: tuple[int, int] = (0, 2)  # echo dropout spots on the walls (count range)
    dropout_depth: Range = (0.35, 0.75)  # how much a dropout spot dims
    shadow_probability: float = 0.25  # rib/lung shadow wedge
    # --- video ----------------------------------------------------------------------------
    fps_common: int = 50
    fps_common_share: float = 0.8
    fps_range: tuple[int, int] = (30, 90)  # the other videos: uniform integers here
    frames_range: tuple[int, int] = (60, 300)
    frames_extra_mean: float = 50.0  # frames = min + Gamma(2, mean / 2), clipped
    min_beats: float = 2.1  # every video holds at least this many beats
    size_px: int = 112

    def replace(self, **changes: Any) -> Site:
        """A copy with some fields changed (e.g. short videos for tests)."""
        return dataclasses.replace(self, **changes)


TARGET = Site(name="target")

# The pretraining hospital: many scanners and sonographers, so its acquisition ranges are
# wide and hold most of the target's, but weighted differently (mostly 30 fps, narrower and
# deeper sectors on average, coarser speckle) and with a sicker population (a second EF mode
# near 38 %). A source whose ranges excluded the target's (an earlier design) left a small
# CLIP's embeddings useless on the target: zero-shot r 0.75 on held-out source, 0.2 on target.
SOURCE = Site(
    name="source",
    ef_components=((0.55, 57.0, 10.0), (0.45, 38.0, 15.0)),
    ef_range=(7.0, 92.0),
    train_coverage_levels=None,
    heart_rate_bpm=(80.0, 18.0),
    lv_length_px=52.0,
    sector_half_angle_deg=(33.0, 46.0),
    sector_radius_px=(104.0, 135.0),
    zoom=(0.88, 1.15),
    apex_depth_px=(5.0, 17.0),
    apex_lateral_px=(-8.0, 7.0),
    axis_tilt_deg=(0.0, 24.0),
    gain_db=(-4.0, 5.0),
    dynamic_range_db=(42.0, 58.0),
    contrast_gamma=(0.8, 1.25),
    speckle_strength=(0.75, 1.0),
    speckle_size_px=(0.6, 1.4),
    speckle_correlation=(0.4, 0.85),
    blur_px=(0.5, 1.2),
    attenuation=(0.2, 1.2),
    noise_floor=(0.0008, 0.004),
    apical_clutter=(0.0, 0.45),
    dropout_blobs=(0, 3),
    shadow_probability=0.35,
    fps_common=30,
    fps_common_share=0.7,
    fps_range=(25, 60),
)

SITES: dict[str, Site] = {site.name: site for site in (TARGET, SOURCE)}


def get_site(site: str | Site, overrides: Mapping[str, Any] | None = None) -> Site:
    """Resolve a site by name (or pass one through), with optional field overrides."""
    if isinstance(site, Site):
        resolved = site
    else:
        try:
            resolved = SITES[str(site)]
        except KeyError:
            raise ValueError(f"unknown site {site!r}; known sites: {sorted(SITES)}") from None
    if overrides:
        fields = {f.name for f in dataclasses.fields(Site)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"site {resolved.name!r}: unknown field(s) {unknown}")
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        resolved = dataclasses.replace(resolved, **changes)
    return resolved

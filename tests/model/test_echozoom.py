"""EchoZoom: tiles stitched where they came from, shapes for both towers, exact warm start."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from cardiac_pipeline.model.backbone import create_backbone
from cardiac_pipeline.model.echozoom import (
    EchoZoom,
    PixelNormalize,
    cut_into_tiles,
    stitch_tiles,
)
from cardiac_pipeline.nn.encoders.open_clip import feature_trunk


@pytest.fixture(autouse=True)
def _quiet_open_clip() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    yield
    root.setLevel(level)


class AvgPoolTrunk(nn.Module):
    """A fake trunk whose feature map is the image average-pooled over 28x28 cells (4x4 map)."""

    num_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(images.shape))
        return nn.functional.avg_pool2d(images, 28)


class PositionTrunk(nn.Module):
    """A fake trunk mapping each tile to a 1x1 map holding the tile's top-left pixel value."""

    num_features = 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :1, :1, :1]


def test_cut_and_stitch_put_tiles_back_in_place() -> None:
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    tiles = cut_into_tiles(image, scale=2, tile=2)
    assert tiles.shape == (8, 3, 2, 2)
    torch.testing.assert_close(tiles[1], image[0, :, 0:2, 2:4])  # row 0, column 1
    torch.testing.assert_close(tiles[2], image[0, :, 2:4, 0:2])  # row 1, column 0
    torch.testing.assert_close(tiles[7], image[1, :, 2:4, 2:4])
    torch.testing.assert_close(stitch_tiles(tiles, scale=2), image)


def test_scale_two_tiles_stitched_in_the_right_places() -> None:
    # Upsampling by 2 (nearest) and tiling, the tile whose top-left pixel is original pixel
    # (56*i, 56*j) must land at map cell (i, j).
    image = torch.rand(1, 1, 112, 112)
    zoom = EchoZoom(PositionTrunk(), scales=(2,), tile=112, embed_dim=4, interpolation="nearest")
    stitched = stitch_tiles(PositionTrunk()(cut_into_tiles(zoom._resize(image, 224), 2, 112)), 2)
    expected = image[0, 0, ::56, ::56]
    torch.testing.assert_close(stitched[0, 0], expected)


def test_avgpool_trunk_scale_two_map_equals_scale_one_map() -> None:
    # With an average-pooling trunk and nearest upsampling, correctly stitched and pooled
    # scale-2 maps reproduce the scale-1 map exactly; any misplaced tile breaks this.
    trunk = AvgPoolTrunk()
    zoom = EchoZoom(trunk, scales=(1, 2), tile=112, embed_dim=5, interpolation="nearest")
    images = torch.rand(3, 3, 112, 112)
    maps = zoom.feature_maps(images)
    assert maps.shape == (3, 6, 4, 4)
    torch.testing.assert_close(maps[:, 3:], maps[:, :3])
    torch.testing.assert_close(maps[:, :3], nn.functional.avg_pool2d(images, 28))
    assert trunk.calls == [(3 + 3 * 4, 3, 112, 112)]  # all tiles of all scales in one batch
    assert zoom(images).shape == (3, 5)


def test_scale_one_resizes_frames_that_are_not_tile_sized() -> None:
    zoom = EchoZoom(AvgPoolTrunk(), scales=(1,), tile=112, embed_dim=2)
    assert zoom.feature_maps(torch.rand(2, 3, 128, 128)).shape == (2, 3, 4, 4)


@pytest.mark.parametrize(
    ("name", "channels", "grid"), [("echo-convnext-tiny", 256, 3), ("echo-vit-tiny", 128, 7)]
)
@pytest.mark.parametrize("scales", [(1,), (1, 2)])
def test_real_towers_shapes_and_warm_start(
    name: str, channels: int, grid: int, scales: tuple[int, ...]
) -> None:
    model = create_backbone(name, seed=0).model.eval()
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        tower_embedding = model.encode_image(images)  # before EchoZoom takes the tower over
        zoom = EchoZoom(feature_trunk(model.visual), scales=scales, tile=112).eval()
        maps = zoom.feature_maps(images)
        embedding = zoom(images)
    assert maps.shape == (2, channels * len(scales), grid, grid)
    assert embedding.shape == (2, 128)
    # the tower's own pooled path, initialised from its head: the larger scales start at zero
    torch.testing.assert_close(embedding, tower_embedding, atol=1e-5, rtol=1e-4)
    if scales != (1,):
        assert torch.count_nonzero(zoom.proj.weight[:, channels:]) == 0


def test_tower_head_moves_into_echozoom() -> None:
    model = create_backbone("echo-convnext-tiny", seed=0).model
    zoom = EchoZoom(feature_trunk(model.visual), scales=(1, 2))
    names = [n for n, _ in zoom.trunk.named_parameters()]
    assert not any(n.startswith("trunk.head") for n in names)  # no dead parameters left behind


def test_vit_tile_must_match_the_tower_size() -> None:
    model = create_backbone("echo-vit-tiny", seed=0).model
    zoom = EchoZoom(feature_trunk(model.visual), scales=(1,), tile=96)
    with pytest.raises(ValueError, match="tile"):
        zoom(torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize("scales", [(), (0, 1), (1, 1)])
def test_bad_scales_are_refused(scales: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="scales"):
        EchoZoom(AvgPoolTrunk(), scales=scales, embed_dim=2)


def test_pixel_normalize_uint8_grey_and_float() -> None:
    norm = PixelNormalize(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    grey = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1)
    out = norm(grey)
    assert out.shape == (2, 3, 1, 1) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, :, 0, 0], torch.tensor([[-1.0, -1.0, 0.0], [1.0, 3.0, 1.0]]))
    torch.testing.assert_close(norm(grey.float() / 255.0), out)
    with pytest.raises(ValueError, match="channels"):
        norm(torch.zeros(1, 2, 1, 1))

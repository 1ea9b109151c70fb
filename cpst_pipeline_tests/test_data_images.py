"""Image and mask reading: mode conversion, corrupt files, mask rasterisation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpst_pipeline.data.images import ImageReadError, decode_image, load_image, load_image_rgb, load_mask, probe_image


def save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def noise_rgb(height: int = 40, width: int = 60, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "RGB"])
def test_8bit_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    image = noise_rgb().convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    rgb = load_image_rgb(save(tmp_path / f"image{suffix}", image))
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable
    if mode in ("L", "RGB", "RGBA"):
        np.testing.assert_array_equal(rgb, np.asarray(image.convert("RGB")))


def test_16bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = save(tmp_path / "deep.png", Image.fromarray(values))
    assert probe_image(path).mode.startswith("I")
    rgb = load_image_rgb(path)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 1, 128, 255])
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_float_image_in_unit_range_spans_0_to_255(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    rgb = load_image_rgb(save(tmp_path / "float.tif", Image.fromarray(values)))
    np.testing.assert_array_equal(rgb[0, :, 1], [0, 128, 255])


def test_probe_reports_size_and_mode(tmp_path: Path) -> None:
    path = save(tmp_path / "grey.png", noise_rgb(30, 50).convert("L"))
    info = probe_image(path)
    assert (info.width, info.height, info.mode) == (50, 30, "L") and info.pixel_std > 40  # noise


def test_probe_refuses_more_pixels_than_allowed_before_decoding(tmp_path: Path) -> None:
    path = save(tmp_path / "grey.png", noise_rgb(30, 50).convert("L"))
    with pytest.raises(ImageReadError, match="image too large: 50x30 = 1,500 pixels, above max_pixels 1,000"):
        probe_image(path, max_pixels=1000)


@pytest.mark.parametrize("format, suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_files_are_detected(tmp_path: Path, format: str, suffix: str) -> None:
    data = encoded(noise_rgb(), format)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) * 2 // 3])
    for read in (probe_image, load_image_rgb):
        with pytest.raises(ImageReadError, match="truncated image") as error:
            read(path)
        assert error.value.path == str(path)


def test_png_missing_its_end_chunk_is_detected(tmp_path: Path) -> None:
    data = encoded(noise_rgb(), "PNG")
    path = tmp_path / "no_end.png"
    path.write_bytes(data[:-12])  # the pixels are all there; only IEND is gone
    with pytest.raises(ImageReadError):
        probe_image(path)


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"this is not an image at all", "unreadable: not an image file")],
)
def test_non_images_raise_with_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason):
        load_image_rgb(path)


def test_missing_file_raises_image_read_error(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        probe_image(tmp_path / "absent.png")


@pytest.mark.parametrize("mode, format", [("L", "PNG"), ("RGB", "PNG"), ("RGB", "JPEG"), ("P", "BMP")])
def test_bytes_decode_like_files(tmp_path: Path, mode: str, format: str) -> None:
    data = encoded(noise_rgb().convert(mode), format)
    path = tmp_path / "image"
    path.write_bytes(data)
    np.testing.assert_array_equal(decode_image(data), load_image(path))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "unreadable: not an image file"),
        (encoded(noise_rgb(), "PNG")[:900], "truncated image"),
        ("aGVsbG8=", "expected image bytes, got str"),
    ],
)
def test_bad_bytes_raise_with_reason_and_name(data, reason: str) -> None:
    with pytest.raises(ImageReadError, match=reason) as error:
        decode_image(data, name="row 3")
    assert error.value.path == "row 3"


def test_pixel_mask_marks_any_nonzero_channel(tmp_path: Path) -> None:
    mask_rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    mask_rgb[1, 2, 2] = 1
    mask = load_mask(save(tmp_path / "m.png", Image.fromarray(mask_rgb)), "pixel", (5, 4))
    assert mask.dtype == bool and mask.shape == (4, 5)
    assert mask.sum() == 1 and mask[1, 2]


def test_one_bit_bmp_mask(tmp_path: Path) -> None:
    bits = np.zeros((6, 8), dtype=bool)
    bits[2:4, 3:6] = True
    mask = load_mask(save(tmp_path / "m.bmp", Image.fromarray(bits).convert("1")), "pixel")
    np.testing.assert_array_equal(mask, bits)


def test_pixel_mask_of_wrong_size_is_rejected(tmp_path: Path) -> None:
    path = save(tmp_path / "m.png", Image.new("L", (100, 80)))
    with pytest.raises(ImageReadError, match="mask size 100x80 does not match image 120x80"):
        load_mask(path, "pixel", (120, 80))


def test_unreadable_pixel_mask_says_mask(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="^.*: mask unreadable: "):
        load_mask(path, "pixel", (4, 4))


def voc(boxes: list[tuple[int, int, int, int]], size: tuple[int, int] = (10, 8)) -> str:
    objects = "".join(
        f"<object><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for a, b, c, d in boxes
    )
    declared = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>"
    return f"<annotation>{declared}{objects}</annotation>"


def test_voc_boxes_are_rasterised_one_based_inclusive_and_clipped(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(voc([(1, 1, 2, 3), (9, 7, 14, 12)]))
    mask = load_mask(path, "boxes", (10, 8))
    expected = np.zeros((8, 10), dtype=bool)
    expected[0:3, 0:2] = True  # pixels 1..2 x 1..3 in VOC's 1-based coordinates
    expected[6:8, 8:10] = True  # the second box runs off the image and is clipped
    np.testing.assert_array_equal(mask, expected)


def test_voc_declared_size_must_match_image(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(voc([(1, 1, 2, 2)], size=(200, 200)))
    with pytest.raises(ImageReadError, match="mask size 200x200 does not match image 10x8"):
        load_mask(path, "boxes", (10, 8))


@pytest.mark.parametrize("text", ["<annotation><object>", voc([(5, 1, 2, 3)])])
def test_broken_voc_files_are_rejected(tmp_path: Path, text: str) -> None:
    path = tmp_path / "a.xml"
    path.write_text(text)
    with pytest.raises(ImageReadError, match="mask unreadable"):
        load_mask(path, "boxes", (10, 8))


def test_box_masks_need_a_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image size"):
        load_mask(tmp_path / "a.xml", "boxes")

"""Reading images and masks, pairing by stem, and the messages for bad files (msrfnet.data.io)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from _data_helpers import blob_pair, save
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from msrfnet.data.files import pair_files
from msrfnet.data.io import (
    binarise_mask,
    count_objects,
    is_instance_label_mask,
    label_map_reason,
    read_image,
    read_mask,
)
from msrfnet.errors import MSRFError

# ---------------------------------------------------------------- pairing


def test_pairs_by_stem_across_extensions_sorted(tmp_path: Path) -> None:
    img, msk = tmp_path / "images", tmp_path / "masks"
    image, mask = blob_pair()
    for stem, ext in [("b", ".JPG"), ("a", ".jpg"), ("c", ".tif")]:
        save(img / f"{stem}{ext}", image)
    for stem, ext in [("c", ".PNG"), ("a", ".png"), ("b", ".bmp")]:
        save(msk / f"{stem}{ext}", mask)
    (img / "notes.txt").write_text("not an image")
    (img / ".DS_Store").write_bytes(b"\0")
    pairing = pair_files(img, msk, base=tmp_path)
    assert pairing.problems == []
    assert [(p.stem, p.image.name, p.mask.name) for p in pairing.pairs] == [
        ("a", "a.jpg", "a.png"),
        ("b", "b.JPG", "b.bmp"),
        ("c", "c.tif", "c.PNG"),
    ]


def test_unpaired_and_duplicate_stems_are_reported(tmp_path: Path) -> None:
    img, msk = tmp_path / "train/images", tmp_path / "train/masks"
    image, mask = blob_pair()
    for name in ("a.png", "only_image.png", "dup.png", "dup.jpg"):
        save(img / name, image)
    for name in ("a.png", "only_mask.png", "dup.png"):
        save(msk / name, mask)
    pairing = pair_files(img, msk, base=tmp_path)
    assert [p.stem for p in pairing.pairs] == ["a"]
    text = "\n".join(pairing.problems)
    assert "train/images/only_image.png: no mask with stem 'only_image' in train/masks/" in text
    assert "train/masks/only_mask.png: no image with stem 'only_mask' in train/images/" in text
    assert "train/images/dup.jpg, train/images/dup.png: several files share the stem 'dup'" in text
    assert len(pairing.problems) == 3


# ---------------------------------------------------------------- images


def test_rgba_alpha_dropped_not_composited(tmp_path: Path) -> None:
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 0
    out = read_image(save(tmp_path / "a.png", rgba))
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    assert (out == [200, 100, 50]).all()


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif"])
def test_grey_becomes_three_equal_channels(tmp_path: Path, ext: str) -> None:
    grey = np.tile(np.arange(0, 240, 10, dtype=np.uint8), (8, 1))
    out = read_image(save(tmp_path / f"g{ext}", grey))
    assert out.shape == (8, 24, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    if ext != ".jpg":
        assert (out[..., 0] == grey).all()


def test_palette_and_bilevel_images(tmp_path: Path) -> None:
    rgb, _ = blob_pair()
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "p.png")
    assert (read_image(tmp_path / "p.png") == np.asarray(pal.convert("RGB"))).all()
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "b.png")
    assert (read_image(tmp_path / "b.png")[..., 0] == np.eye(4) * 255).all()


def test_16bit_grey_is_stretched_from_its_own_range(tmp_path: Path) -> None:
    # A 12-bit camera image stored in 16 bits: /257 would leave it almost black.
    a = np.linspace(100, 4095, 64, dtype=np.float64).reshape(8, 8).astype(np.uint16)
    for ext in (".png", ".tif"):
        cv2.imwrite(str(tmp_path / f"a{ext}"), a)
        out = read_image(tmp_path / f"a{ext}")
        assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
        assert out.min() == 0 and out.max() == 255
        expected = np.rint((a - 100.0) * 255 / (4095 - 100)).astype(np.uint8)
        assert (out[..., 0] == expected).all()


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_keeps_precision_and_rgb_order(tmp_path: Path, ext: str) -> None:
    rgb = np.zeros((4, 4, 3), np.uint16)
    rgb[..., 0] = 65535  # red channel bright; Pillow alone would truncate, OpenCV reads BGR
    rgb[0, 0] = (0, 0, 0)
    cv2.imwrite(str(tmp_path / f"c{ext}"), rgb[..., ::-1])
    out = read_image(tmp_path / f"c{ext}")
    assert (out[1:, :, 0] == 255).all() and (out[1:, :, 1:] == 0).all() and (out[0, 0] == 0).all()


def test_constant_16bit_image_becomes_zeros(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "k.png"), np.full((3, 3), 1234, np.uint16))
    assert (read_image(tmp_path / "k.png") == 0).all()


# ---------------------------------------------------------------- bad files


def _truncated(tmp_path: Path, ext: str) -> Path:
    image, _ = blob_pair(64, 64)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG" if ext == ".png" else "JPEG")
    path = tmp_path / f"cut{ext}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (
            lambda d: (d / "zero.png").write_bytes(b"") and None or d / "zero.png",
            "zero.png: empty file (0 bytes)",
        ),
        (
            lambda d: (d / "t.png").write_text("hello") and d / "t.png",
            "t.png: not a readable image file",
        ),
        (lambda d: _truncated(d, ".png"), "cut.png: corrupt or truncated image"),
        (lambda d: _truncated(d, ".jpg"), "cut.jpg: corrupt or truncated image"),
        (lambda d: d / "missing.png", "missing.png: file not found"),
    ],
    ids=["zero-byte", "text-as-png", "truncated-png", "truncated-jpeg", "missing"],
)
def test_bad_files_raise_one_line_naming_the_file(tmp_path: Path, make, needle: str) -> None:
    path = make(tmp_path)
    for reader in (read_image, read_mask):
        with pytest.raises(MSRFError) as info:
            reader(path)
        assert needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MSRFError, match=r"^train/x\.png: "):
        read_image(path, name="train/x.png")


# ---------------------------------------------------------------- masks


def test_mask_encodings_all_binarise_alike(tmp_path: Path) -> None:
    _, m255 = blob_pair(48, 48, seed=3)
    truth = m255 > 0
    save(tmp_path / "m255.png", m255)
    save(tmp_path / "m01.png", (m255 // 255).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "m16.png"), truth.astype(np.uint16) * 65535)
    save(tmp_path / "rgb.png", np.repeat(m255[..., None], 3, axis=2))  # Kvasir-style RGB mask
    Image.fromarray(truth.astype(np.uint8)).convert("P").save(tmp_path / "pal.png")  # indices 0/1
    Image.fromarray(truth).save(tmp_path / "bilevel.png")
    for name in ("m255.png", "m01.png", "m16.png", "rgb.png", "pal.png", "bilevel.png"):
        out = read_mask(tmp_path / name)
        assert out.dtype == bool and (out == truth).all(), name


def test_jpeg_noisy_mask_is_not_a_label_map(tmp_path: Path) -> None:
    _, m255 = blob_pair(64, 64, seed=5)
    save(tmp_path / "m.jpg", m255, quality=50)
    noisy = np.asarray(Image.open(tmp_path / "m.jpg").convert("L"))
    assert len(np.unique(noisy)) > 10  # really noisy
    assert label_map_reason(noisy) is None
    out = read_mask(tmp_path / "m.jpg")
    assert (out != (m255 > 0)).mean() < 0.01


def test_antialiased_mask_is_not_a_label_map() -> None:
    _, m255 = blob_pair(200, 200, seed=1)
    grey = np.asarray(Image.fromarray(m255).resize((37, 41), Image.Resampling.LANCZOS))
    assert len(np.unique(grey)) > 20 and label_map_reason(grey) is None


def test_label_map_raises_unless_threshold_given(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(4, dtype=np.uint8), 16).reshape(8, 8)  # classes 0/1/2/3, 25 % each
    path = save(tmp_path / "lab.png", labels)
    with pytest.raises(MSRFError) as info:
        read_mask(path, name="train/masks/lab.png")
    msg = str(info.value)
    assert msg.startswith("train/masks/lab.png: looks like a label map")
    assert "0 (25.0%), 1 (25.0%), 2 (25.0%), 3 (25.0%)" in msg and "mask_threshold" in msg
    assert (read_mask(path, mask_threshold=0) == (labels > 0)).all()
    assert (read_mask(path, mask_threshold=2) == (labels == 3)).all()


def test_instance_label_mask_raises() -> None:
    # 0..30 instance ids, each under 1 % of the image: half-range binarisation would give nothing.
    inst = np.zeros((100, 100), np.uint8)
    for k in range(1, 31):
        inst[(k * 3) % 100 : (k * 3) % 100 + 3, k * 3 : k * 3 + 3] = k
    assert label_map_reason(inst) is not None
    assert label_map_reason(np.where(inst > 0, 255, 0).astype(np.uint8)) is None
    assert label_map_reason(np.zeros((5, 5), np.uint8)) is None


def _instances(h: int = 40, w: int = 48, n: int = 5) -> np.ndarray:
    """A uint16 instance label image: ``n`` separate squares with ids 1..n (each well under half
    of the nominal range), as napari, Cellpose or StarDist save them."""
    labels = np.zeros((h, w), np.uint16)
    for k in range(1, n + 1):
        labels[2 + 7 * (k - 1) : 7 + 7 * (k - 1), 3 * k : 3 * k + 5] = k
    return labels


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_uint16_instance_labels_are_masks_without_a_threshold(tmp_path: Path, ext) -> None:
    """Issue 21, item 5: foreground = label > 0, told by dtype and value range."""
    labels = _instances()
    path = tmp_path / f"lab{ext}"
    cv2.imwrite(str(path), labels)
    assert is_instance_label_mask(labels) and count_objects(labels) == 5
    assert (read_mask(path) == (labels > 0)).all()
    # a given threshold keeps its meaning: value > T
    assert (read_mask(path, mask_threshold=3) == (labels > 3)).all()


def test_wide_integer_labels_with_many_objects_are_masks() -> None:
    labels = np.zeros((8, 8), np.int32)
    labels[:2, :2], labels[5:, 5:] = 70_000, 70_001  # ids above 16 bits (a whole slide's export)
    assert is_instance_label_mask(labels) and (binarise_mask(labels) == (labels > 0)).all()


def test_what_is_not_an_instance_label_image_keeps_its_rule() -> None:
    labels = _instances()
    assert not is_instance_label_mask(labels.astype(np.uint8))  # 8-bit: the label-map refusal
    with pytest.raises(MSRFError, match="looks like a label map"):
        binarise_mask(labels.astype(np.uint8))
    full = np.where(labels > 0, 65535, 0).astype(np.uint16)
    assert not is_instance_label_mask(full) and (binarise_mask(full) == (labels > 0)).all()
    ramp = np.linspace(0, 65535, 40 * 48).reshape(40, 48).astype(np.uint16)  # anti-aliased edge
    assert not is_instance_label_mask(ramp) and (binarise_mask(ramp) == (ramp > 32767.5)).all()
    assert not is_instance_label_mask((labels > 0).astype(np.uint16))  # 0/1: the same either way
    assert not is_instance_label_mask(-labels.astype(np.int32))  # negative ids: not labels
    assert not is_instance_label_mask(labels.astype(np.float32))


def test_boundary_class_mask_raises() -> None:
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 5:15] = 255
    m[5:15, 5] = 128  # a 'boundary' class covering 2.5 %
    assert "128 (2.5%)" in (label_map_reason(m) or "")


# ---------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    channels=st.sampled_from([1, 3, 4]),
    depth=st.sampled_from([8, 16]),
    ext=st.sampled_from([".png", ".tif", ".bmp"]),
    seed=st.integers(0, 2**16),
)
def test_read_image_any_shape_depth_channels(
    tmp_path_factory, h, w, channels, depth, ext, seed
) -> None:
    if ext == ".bmp" and depth == 16:
        ext = ".png"
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if depth == 8 else np.uint16
    shape = (h, w) if channels == 1 else (h, w, channels)
    arr = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    path = tmp_path_factory.mktemp("prop") / f"x{ext}"
    bgr = arr if channels == 1 else arr[..., [2, 1, 0, 3][:channels]]
    assert cv2.imwrite(str(path), bgr)
    out = read_image(path)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    rgb = arr if channels == 1 else arr[..., :3]
    rgb = rgb if channels > 1 else np.repeat(rgb[..., None], 3, axis=2)
    if depth == 8:
        assert (out == rgb).all()
    else:  # min–max stretch keeps the order of values
        flat_in, flat_out = rgb.ravel().astype(np.int64), out.ravel().astype(np.int64)
        order = np.argsort(flat_in, kind="stable")
        assert (np.diff(flat_out[order]) >= 0).all()

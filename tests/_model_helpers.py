"""Small checkpoints for the test/predict/export tests (``from _model_helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from msrfnet.accel.cpu import flush_denormals
from msrfnet.config import Config
from msrfnet.data import canny_map, read_image, resize_image, sample_root
from msrfnet.model import MSRFNet
from msrfnet.weights.checkpoint import save_weights


def make_weights(path: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A randomly initialised MSRF-Net saved as safetensors with ``Config(image_size=...)``.

    The final head's bias is shifted so that about half the pixels of the sample's test images
    are foreground: masks of an all-empty model would hide mistakes (flips, resizing, thresholds).
    """
    torch.manual_seed(seed)
    model = MSRFNet().eval()
    files = sorted((sample_root() / "test" / "images").glob("*.png"))
    resized = [resize_image(read_image(f), image_size) for f in files]
    image = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255
    canny = torch.from_numpy(np.stack([canny_map(r, 10, 1000) for r in resized]))[:, None].float()
    with flush_denormals(), torch.inference_mode():
        logits = model(image, canny).final
    with torch.no_grad():
        model.head_final.bias -= logits.median()
    save_weights(path, model, Config(image_size=image_size))
    return path


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def mixed_folder(folder: Path, seed: int = 0) -> dict[str, tuple[int, int]]:
    """Images in several formats, modes, sizes (none a multiple of 8 both ways): stem → (H, W)."""
    rng = np.random.default_rng(seed)
    base = read_image(next(iter(sorted((sample_root() / "test" / "images").glob("*.png")))))

    def crop(h: int, w: int) -> np.ndarray:
        return np.ascontiguousarray(base[:h, :w])

    specs = {
        "rgb_png": ("png", crop(50, 70)),
        "photo_jpg": ("jpg", crop(64, 64)),
        "stack_tif": ("tif", crop(33, 47)),
        "grey": ("png", crop(40, 56)[:, :, 0]),
        "alpha": ("png", np.dstack([crop(45, 45), rng.integers(0, 255, (45, 45), dtype=np.uint8)])),
        "grey16": ("png", crop(30, 90)[:, :, 1].astype(np.uint16) * 200),
        "bitmap": ("bmp", crop(72, 41)),
    }
    sizes = {}
    for stem, (ext, array) in specs.items():
        write_image(folder / f"{stem}.{ext}", array)
        sizes[stem] = array.shape[:2]
    return sizes


def use_runner(monkeypatch, runner, image_size: int, canny=(10, 1000), calls=None) -> None:
    """Make every :class:`~msrfnet.inference.segmenter.Segmenter` the commands open (``msrf
    predict``, ``msrf test``) run ``runner`` at ``image_size`` instead of loading a model;
    ``calls`` (a list) gets one item per opening."""
    import msrfnet.inference.runners as runners

    def open_runner(*args, **kwargs):
        if calls is not None:
            calls.append(kwargs)
        cfg = Config(image_size=image_size, canny_low=canny[0], canny_high=canny[1])
        return runner, Path("stand-in.safetensors"), cfg

    monkeypatch.setattr(runners, "open_runner", open_runner)

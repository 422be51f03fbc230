"""Which dataset a command uses when ``--data`` is not given, and where the bundled sample lives."""

from __future__ import annotations

from pathlib import Path

from msrfnet.data.files import is_image_file
from msrfnet.errors import MSRFError

__all__ = ["DEFAULT_DATA", "sample_root", "resolve_data_root"]

DEFAULT_DATA = Path("data") / "kdsb"


def sample_root() -> Path:
    """The bundled 2018 DSB sample (``msrfnet/sample``, package data; see its README.md)."""
    # A plain path next to this package works for editable and wheel installs alike (not zipped).
    return Path(__file__).resolve().parent.parent / "sample"


def _count(split_folder: Path) -> int:
    images = split_folder / "images"
    return sum(1 for p in images.iterdir() if is_image_file(p)) if images.is_dir() else 0


def resolve_data_root(data: str | Path | None) -> tuple[Path, str]:
    """The dataset folder to use and a one-line message saying which and why.

    ``data`` if given (it must exist), else ``./data/kdsb`` if present, else the bundled sample.
    """
    if data is not None:
        path = Path(data).expanduser()
        if not path.is_dir():
            raise MSRFError(
                f"{path}: dataset folder not found "
                "(expected train/, val/, test/ with images/ and masks/)"
            )
        return path, f"data: {path}"
    if DEFAULT_DATA.is_dir():
        return DEFAULT_DATA, f"no --data given: using ./{DEFAULT_DATA.as_posix()}"
    root = sample_root()
    counts = "/".join(str(_count(root / split)) for split in ("train", "val", "test"))
    return (
        root,
        f"no --data and no ./{DEFAULT_DATA.as_posix()}: using the bundled 2018 DSB sample "
        f"({counts} images)",
    )

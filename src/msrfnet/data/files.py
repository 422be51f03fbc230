"""Finding image files and pairing images with masks by file stem: the layout rules of
:mod:`msrfnet.data.io` that need no pixels (extensions case-insensitive, hidden files skipped,
``<stem><mask_suffix>`` for masks)."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IMAGE_EXTENSIONS",
    "Pair",
    "Pairing",
    "display_name",
    "is_image_file",
    "list_image_files",
    "files_by_stem",
    "pair_files",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Pair:
    """One sample on disk: an image and its mask sharing the file stem ``stem``."""

    stem: str
    image: Path
    mask: Path


@dataclass
class Pairing:
    """The result of pairing an ``images/`` folder with a ``masks/`` folder.

    ``pairs`` are sorted by stem; ``problems`` holds one line per unpaired or ambiguous file.
    """

    pairs: list[Pair]
    problems: list[str]


def display_name(path: Path, base: Path | None) -> str:
    """``path`` relative to ``base`` when it lies inside it (for messages), else as given."""
    if base is not None:
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            pass
    return str(path)


def is_image_file(path: Path) -> bool:
    """A visible regular file with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def list_image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name (hidden and other files
    skipped); ``recursive``: in its sub-folders too (hidden folders skipped), sorted by the path
    under ``folder``."""
    folder = Path(folder)
    if not recursive:
        return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [p for p in (Path(parent) / n for n in names) if is_image_file(p)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def files_by_stem(
    folder: Path, *, suffix: str = "", base: Path | None = None
) -> tuple[dict[str, Path], set[str], list[str]]:
    """The image files of ``folder`` by stem, with ``suffix`` taken off the end of each stem
    (``--mask-suffix _segmentation``: ``ISIC_1_segmentation.png`` → ``ISIC_1``).

    Returns (stem → file, the ambiguous stems, problems): a stem shared by several files
    (``a.png`` and ``a.jpg``) is ambiguous and reported, as is a file without ``suffix``.
    """
    problems: list[str] = []
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in list_image_files(folder):
        if suffix and not (path.stem.endswith(suffix) and len(path.stem) > len(suffix)):
            problems.append(
                f"{display_name(path, base)}: name does not end with the mask suffix {suffix!r}"
            )
            continue
        groups[path.stem[: len(path.stem) - len(suffix)]].append(path)
    unique: dict[str, Path] = {}
    ambiguous: set[str] = set()
    for stem, paths in groups.items():
        if len(paths) > 1:
            names = ", ".join(display_name(p, base) for p in paths)
            problems.append(f"{names}: several files share the stem {stem!r}; keep one")
            ambiguous.add(stem)
        else:
            unique[stem] = paths[0]
    return unique, ambiguous, problems


def pair_files(
    images_dir: Path, masks_dir: Path, *, base: Path | None = None, mask_suffix: str = ""
) -> Pairing:
    """Pair ``images_dir`` with ``masks_dir`` by file stem (``a.jpg`` ↔ ``a.png``), sorted by stem;
    with ``mask_suffix`` a mask's stem is the image's plus the suffix (``a.jpg`` ↔
    ``a_segmentation.png``, ISIC's naming).

    Unpaired files and stems that occur twice in one folder (``a.png`` and ``a.jpg``) are reported
    in :attr:`Pairing.problems` with paths relative to ``base``; the rest are paired.
    """
    images, amb_images, problems = files_by_stem(images_dir, base=base)
    masks, amb_masks, more = files_by_stem(masks_dir, suffix=mask_suffix, base=base)
    problems += more
    ambiguous = amb_images | amb_masks
    for stem in sorted(images.keys() - masks.keys() - ambiguous):
        problems.append(
            f"{display_name(images[stem], base)}: no mask with stem {stem + mask_suffix!r} in "
            f"{display_name(masks_dir, base)}/"
        )
    for stem in sorted(masks.keys() - images.keys() - ambiguous):
        problems.append(
            f"{display_name(masks[stem], base)}: no image with stem {stem!r} in "
            f"{display_name(images_dir, base)}/"
        )
    pairs = [
        Pair(stem, images[stem], masks[stem])
        for stem in sorted((images.keys() & masks.keys()) - ambiguous)
    ]
    return Pairing(pairs, problems)

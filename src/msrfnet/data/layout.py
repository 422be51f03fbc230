"""The dataset folder layout: ``ROOT/{train,val,test}/{images,masks}/``.

``valid/`` is accepted for ``val/`` because the original ``train.py`` reads ``valid/`` while its
README says ``val/`` (spec §2.5); having both is ambiguous and reported.
"""

from __future__ import annotations

from pathlib import Path

from msrfnet.data.files import Pair, Pairing, pair_files
from msrfnet.errors import MSRFError

__all__ = [
    "SPLITS",
    "split_candidates",
    "split_dir",
    "split_pairing",
    "require_pairs",
    "split_pairs",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val", "valid"),
    "test": ("test",),
}


def split_candidates(root: Path, split: str) -> list[Path]:
    """The existing folders that could hold ``split`` (``val`` → ``val/`` and/or ``valid/``)."""
    if split not in _ALIASES:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return [Path(root) / name for name in _ALIASES[split] if (Path(root) / name).is_dir()]


def split_dir(root: Path, split: str) -> Path:
    """The folder of ``split`` under ``root``; raises :class:`MSRFError` if missing or ambiguous."""
    found = split_candidates(root, split)
    names = "/ or ".join(_ALIASES[split]) + "/"
    if not found:
        raise MSRFError(
            f"{root}: no {names} folder (expected {root}/{split}/images and {root}/{split}/masks)"
        )
    if len(found) > 1:
        raise MSRFError(f"{root}: both val/ and valid/ exist; keep one")
    return found[0]


def split_pairing(root: Path, split: str, mask_suffix: str = "") -> Pairing:
    """Pair ``images/`` with ``masks/`` of one split (a mask's stem is its image's plus
    ``mask_suffix``); paths in problems are relative to ``root``."""
    folder = split_dir(root, split)
    for sub in ("images", "masks"):
        if not (folder / sub).is_dir():
            raise MSRFError(f"{folder / sub}: folder missing (each split holds images/ and masks/)")
    return pair_files(folder / "images", folder / "masks", base=Path(root), mask_suffix=mask_suffix)


def require_pairs(pairing: Pairing, where: Path, empty: str, more_hint: str = "") -> list[Pair]:
    """``pairing.pairs``, or :class:`MSRFError` naming the first pairing problem (and how many
    more) or, with no pairs at all, the message ``empty``."""
    if pairing.problems:
        extra = (
            f" (and {len(pairing.problems) - 1} more{more_hint})"
            if len(pairing.problems) > 1
            else ""
        )
        raise MSRFError(f"{pairing.problems[0]} (in {where}){extra}")
    if not pairing.pairs:
        raise MSRFError(empty)
    return pairing.pairs


def split_pairs(root: Path, split: str, mask_suffix: str = "") -> list[Pair]:
    """The sorted pairs of one split; :class:`MSRFError` on a pairing problem or if it is empty."""
    return require_pairs(
        split_pairing(root, split, mask_suffix),
        root,
        f"{split_dir(root, split)}: no image/mask pairs (empty split)",
        more_hint="; run `msrf check-data`",
    )

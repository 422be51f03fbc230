"""``msrf split``: turn a flat ``SRC/images`` + ``SRC/masks`` folder into the train/val/test layout.

The original never published its split lists (issue #37), so a split here always writes
``DST/splits.json``; passing that file back re-creates the same split from the same source.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from msrfnet.data.files import Pair, pair_files
from msrfnet.data.layout import SPLITS, require_pairs
from msrfnet.errors import MSRFError

__all__ = ["SPLITS_FILE", "split_dataset"]

SPLITS_FILE = "splits.json"


def _source_pairs(src: Path) -> list[Pair]:
    for sub in ("images", "masks"):
        if not (src / sub).is_dir():
            raise MSRFError(
                f"{src / sub}: folder missing (the source must hold images/ and masks/)"
            )
    pairing = pair_files(src / "images", src / "masks", base=src)
    return require_pairs(pairing, src, f"{src}: no image/mask pairs in images/ and masks/")


def _random_assignment(
    pairs: list[Pair], val: float, test: float, seed: int
) -> dict[str, list[Pair]]:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise MSRFError(
            f"split fractions val={val}, test={test}: each must be in [0, 1) and their sum below 1"
        )
    n = len(pairs)
    n_val, n_test = round(n * val), round(n * test)
    order = np.random.default_rng(seed).permutation(n)
    # Each split is listed sorted by stem so splits.json diffs cleanly and loading order is stable.
    chosen = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    return {
        name: sorted((pairs[i] for i in idx), key=lambda p: p.stem) for name, idx in chosen.items()
    }


def _assignment_from_json(
    pairs: list[Pair], splits_json: Path
) -> tuple[dict[str, list[Pair]], dict[str, Any]]:
    try:
        spec = json.loads(Path(splits_json).read_text())
        lists = {name: spec["splits"][name]["images"] for name in SPLITS}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MSRFError(f"{splits_json}: not a readable splits file ({err})") from None
    by_stem = {p.stem: p for p in pairs}
    out: dict[str, list[Pair]] = {}
    for name, files in lists.items():
        # Match by stem so a source converted from .jpg to .png still reproduces the split.
        stems = [Path(f).stem for f in files]
        missing = [s for s in stems if s not in by_stem]
        if missing:
            raise MSRFError(
                f"{splits_json}: {len(missing)} {name} file(s) not in the source, e.g. "
                f"{missing[0]!r}"
            )
        out[name] = [by_stem[s] for s in stems]
    return out, spec


def split_dataset(
    src: str | Path,
    dst: str | Path,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 42,
    *,
    splits_json: str | Path | None = None,
) -> dict[str, list[str]]:
    """Copy ``SRC/{images,masks}`` into ``DST/{train,val,test}/{images,masks}`` and write
    ``DST/splits.json``.

    The split is a seeded random permutation: ``round(N·test)`` test, ``round(N·val)`` val, the rest
    train. With ``splits_json`` (a file written by an earlier call) the listed split is re-created
    instead and ``val``/``test``/``seed`` are ignored. Pairing is validated first; ``DST`` must be
    new or empty. Returns the image file names per split.
    """
    src, dst = Path(src), Path(dst)
    pairs = _source_pairs(src)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise MSRFError(f"{dst}: already exists and is not empty; choose a new destination folder")
    if splits_json is not None:
        assignment, spec = _assignment_from_json(pairs, Path(splits_json))
        val, test, seed = spec.get("val", val), spec.get("test", test), spec.get("seed", seed)
    else:
        assignment = _random_assignment(pairs, val, test, seed)
    for name in SPLITS:
        for sub in ("images", "masks"):
            (dst / name / sub).mkdir(parents=True, exist_ok=True)
        for pair in assignment[name]:
            shutil.copy2(pair.image, dst / name / "images" / pair.image.name)
            shutil.copy2(pair.mask, dst / name / "masks" / pair.mask.name)
    record = {
        "version": 1,
        "source": src.name,
        "seed": seed,
        "val": val,
        "test": test,
        "counts": {name: len(assignment[name]) for name in SPLITS},
        "splits": {
            name: {
                "images": [p.image.name for p in assignment[name]],
                "masks": [p.mask.name for p in assignment[name]],
            }
            for name in SPLITS
        },
    }
    (dst / SPLITS_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return {name: record["splits"][name]["images"] for name in SPLITS}

"""Where an export may be written: the one check every ``msrf export`` format runs before it
exports anything (an export takes seconds to minutes; a refusal after it is time lost).

:func:`check_destination` refuses, in one line:

* a suffix the format does not write (``--out model.pt`` would be an ONNX file named ``.pt``):
  ONNX ``.onnx``; int8 ``.onnx`` or ``.pt2``; a bioimage.io package ``.zip`` or a folder;
* what :func:`msrfnet.safe_output.file_target` refuses for a file (a folder in the way, a folder
  among the inputs, a file msrf did not write, an earlier export without ``overwrite``); for a
  package folder, an existing folder that is not an earlier msrf package holding only its files;
* a destination that cannot be written (a read-only folder, a file where a folder must go).

A file export is then written through the returned :class:`Destination` (atomically, recorded in
its folder's manifest, ``.msrf-manifest.jsonl``); a package folder is renamed into place.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from msrfnet.errors import MSRFError
from msrfnet.safe_output import OutputFolder, file_target, io_error, refuse_collisions

__all__ = [
    "FORMATS",
    "PACKAGE_NAMES",
    "PACKAGE_FILES",
    "Destination",
    "export_format",
    "check_suffix",
    "is_earlier_package",
    "check_destination",
]

#: format → (the suffixes it writes; "" is a folder, the command recorded in the manifest)
FORMATS = {
    "onnx": ((".onnx",), "msrf export"),
    "int8-onnx": ((".onnx",), "msrf export --int8"),
    "int8-pt2": ((".pt2",), "msrf export --int8"),
    "bioimageio": ((".zip", ""), "msrf export --bioimageio"),
}
#: the names an msrf bioimage.io package gives itself in its ``rdf.yaml`` (shipped weights, other)
PACKAGE_NAMES = ("MSRF-Net nuclei segmentation", "MSRF-Net segmentation")
#: every file an msrf package folder holds (an earlier package is replaced only if it holds no
#: other: a file a user added to it is never deleted)
PACKAGE_FILES = frozenset(
    {
        "rdf.yaml",
        "README.md",
        "cover.png",
        "msrfnet.onnx",
        "msrfnet.pt",
        "test_input.npy",
        "test_output.npy",
        "sample_input.tif",
        "sample_output.tif",
    }
)


@dataclass(frozen=True)
class Destination:
    """A checked export destination: ``path``, and for a file the output folder that writes it
    (``None`` for a bioimage.io package folder, which its writer renames into place)."""

    path: Path
    folder: OutputFolder | None

    def write_file(self, write: Callable[[str], object]) -> Path:
        """``write(tmp_path)``, then the file is recorded and renamed onto :attr:`path`."""
        if self.folder is None:
            raise TypeError(f"{self.path}: a package folder, not a file")
        return self.folder.write_file(self.path.name, write)


def export_format(out: str | Path, *, int8: bool = False, bioimageio: bool = False) -> str:
    """The format the ``msrf export`` flags ask for: ``bioimageio``, ``int8-pt2`` (``--int8`` and
    a ``.pt2`` name), ``int8-onnx`` or ``onnx`` (a key of :data:`FORMATS`)."""
    if bioimageio:
        return "bioimageio"
    if int8:
        return "int8-pt2" if Path(out).suffix.lower() == ".pt2" else "int8-onnx"
    return "onnx"


def check_suffix(out: str | Path, fmt: str, option: str = "--out") -> None:
    """Refuse a name whose suffix ``fmt`` does not write, naming the ones it does."""
    out = Path(out)
    suffix = out.suffix.lower()
    suffixes, _ = FORMATS[fmt]
    if suffix in suffixes or (fmt == "bioimageio" and out.is_dir()):
        return
    if fmt == "onnx" and suffix == ".pt2":
        why = "a .pt2 package is the int8 CPU model; add --int8 (or write an .onnx file)"
    elif fmt == "int8-pt2":
        why = "an AOTInductor package needs the .pt2 suffix"
    else:
        accepts = {
            "onnx": "msrf export writes .onnx (with --int8: .onnx or .pt2; with --bioimageio: "
            "a .zip or a folder)",
            "int8-onnx": "msrf export --int8 writes .onnx (onnxruntime) or .pt2 (AOTInductor)",
            "bioimageio": "a bioimage.io package is a .zip file or a folder (a name without a "
            "suffix)",
        }[fmt]
        why = f"{f'unknown suffix {suffix}' if suffix else 'no suffix'}; {accepts}"
    raise MSRFError(f"{option} {out}: {why}")


def is_earlier_package(folder: str | Path) -> bool:
    """Whether ``folder`` is an msrf bioimage.io package folder: it holds only
    :data:`PACKAGE_FILES`, and its ``rdf.yaml`` has one of :data:`PACKAGE_NAMES`."""
    import yaml

    folder = Path(folder)
    try:
        if any(p.name not in PACKAGE_FILES or not p.is_file() for p in folder.iterdir()):
            return False
        rdf = yaml.safe_load((folder / "rdf.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(rdf, dict) and rdf.get("name") in PACKAGE_NAMES


def _check_package_folder(
    out: Path, inputs: Iterable[str | Path], overwrite: bool, option: str
) -> None:
    """A bioimage.io package folder: not among the inputs; an existing path only an earlier msrf
    package, replaced only with ``overwrite``."""
    refuse_collisions(out, input_folders=inputs, option=option)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not is_earlier_package(out):
        raise MSRFError(
            f"{option} {out}: exists and is not an msrf bioimage.io package; choose another path"
        )
    if not overwrite:
        raise MSRFError(
            f"{option} {out}: exists (an earlier msrf bioimage.io package); pass --overwrite to "
            "replace it"
        )


def _check_writable(out: Path) -> None:
    """Refuse when the folder that will hold ``out`` (or its nearest existing ancestor, where the
    missing folders will be created) cannot take a new file: a temporary file is made and removed
    there, nothing stays."""
    folder = out.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        error = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        raise io_error(folder, error, "cannot create the output folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise io_error(out, error) from None


def check_destination(
    out: str | Path,
    fmt: str,
    *,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    option: str = "--out",
) -> Destination:
    """Check where an export of format ``fmt`` (a key of :data:`FORMATS`) goes, before it is
    made (see the module docstring); ``inputs`` are the folders it reads (weights, calibration
    images), which it may not be written into. ``option`` names the flag in the messages.

    Raises:
        MSRFError: one line naming ``out`` and what is wrong.
    """
    out = Path(out)
    check_suffix(out, fmt, option)
    inputs = list(inputs)
    if fmt == "bioimageio" and out.suffix.lower() != ".zip":
        _check_package_folder(out, inputs, overwrite, option)
        folder = None
    else:
        command = FORMATS[fmt][1]
        folder, _ = file_target(out, command, inputs=inputs, overwrite=overwrite, option=option)
    _check_writable(out)
    return Destination(out, folder)

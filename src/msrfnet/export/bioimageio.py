"""``msrf export --bioimageio OUT``: a BioImage Model Zoo package (bioimage.io format 0.5).

ilastik, deepImageJ/Fiji, QuPath and napari load models in this format. The package holds the
single-input ONNX model (:class:`~msrfnet.model.pipeline.ImageToProbability`: the Canny map and
the [0, 1] scaling are in the graph, so a tool feeds uint8 RGB pixels), a TorchScript trace of
the same module as a second weights format, test tensors from a real sample image (the expected
output is onnxruntime's), a cover, a README with the model card and the size/scale rules, the
paper's citation and the licences.

The ONNX file is made by :func:`msrfnet.export.onnx.export_onnx` (``single_input=True``), not here:
the export rule lives in one place. Offline rules (checked with bioimageio.core 0.11.0): no URL
and no ``github_user`` anywhere, because ``bioimageio test`` always checks them over the network;
sample tensors are .tif (an .npy sample crashes the test). bioimageio.core is an optional extra,
imported inside :func:`package_bioimageio`.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msrfnet.data import read_image, resize_image, sample_root
from msrfnet.errors import MSRFError, first_line
from msrfnet.export.bioimageio_card import SAMPLE, describe, readme_text
from msrfnet.export.destination import PACKAGE_NAMES, check_destination
from msrfnet.model.loading import load_model
from msrfnet.model.pipeline import EXPORT_HYSTERESIS_ITERATIONS, ImageToProbability
from msrfnet.overlay import draw_overlay, encode_png
from msrfnet.safe_output import file_digest, io_error
from msrfnet.weights.resolve import SHIPPED_WEIGHTS

__all__ = [
    "NAMES",
    "NEEDS",
    "SOURCES",
    "package_bioimageio",
]

log = logging.getLogger("msrfnet")

NAMES = dict(zip((True, False), PACKAGE_NAMES))  # the package's name: shipped weights or not
NEEDS = "msrf export --bioimageio needs bioimageio.core: pip install -e '.[bioimageio]'"
#: role → file name of each file a package holds besides rdf.yaml (and msrfnet.pt, the TorchScript
#: weights); all of them in msrfnet.export.destination.PACKAGE_FILES, which guards a replacement
SOURCES = {
    "onnx": "msrfnet.onnx",
    "readme": "README.md",
    "cover": "cover.png",
    "test_input": "test_input.npy",
    "sample_input": "sample_input.tif",
    "test_output": "test_output.npy",
    "sample_output": "sample_output.tif",
}


def _check_onnx(session, path: Path, config) -> None:
    """Refuse an ONNX model that is not the single-input one (uint8 ``image`` → ``probability``)
    or whose recorded Canny thresholds (if any) are not ``config``'s, which README and TorchScript
    trace use."""
    ins, outs = session.get_inputs(), session.get_outputs()
    if [(i.name, i.type) for i in ins] != [("image", "tensor(uint8)")] or [
        o.name for o in outs
    ] != ["probability"]:
        raise MSRFError(
            f"{path}: not msrf's single-input ONNX model (uint8 'image' in, "
            "'probability' out): export it with single_input=True"
        )
    meta = session.get_modelmeta().custom_metadata_map
    for key in ("canny_low", "canny_high"):
        if key in meta and float(meta[key]) != float(getattr(config, key)):
            raise MSRFError(
                f"{path}: exported with {key}={meta[key]}, but the weights' config "
                f"says {getattr(config, key)}: export it from the same weights"
            )


def _torchscript(weights_path: Path, config, example: np.ndarray, path: Path) -> None:
    """Trace the same :class:`ImageToProbability` as the ONNX graph (same hysteresis bound)."""
    import warnings

    import torch

    net = load_model(weights_path)[0].float().eval().requires_grad_(False)
    module = ImageToProbability(
        net, config.canny_low, config.canny_high, EXPORT_HYSTERESIS_ITERATIONS
    ).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarning: the channel count (3) is a constant
        torch.jit.trace(module, torch.from_numpy(example), check_trace=False).save(str(path))


def _require_extras() -> None:
    """bioimageio.spec (with tifffile), onnx and onnxruntime, or one line naming the extra."""
    try:
        import bioimageio.spec.model.v0_5  # noqa: F401
        import tifffile  # noqa: F401  (a dependency of bioimageio.spec)
        from bioimageio import spec  # noqa: F401
    except ImportError as error:
        raise MSRFError(f"{NEEDS} ({first_line(error)})") from None
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise MSRFError(
            f"msrf export --bioimageio needs onnx and onnxruntime: pip install -e "
            f"'.[onnx,bioimageio]' ({first_line(error)})"
        ) from None


@dataclass(frozen=True)
class _Package:
    """What goes into a package, planned before anything is written."""

    onnx_path: Path
    weights_path: Path
    config: object  # the weights' msrfnet.config.Config
    sha: str  # the weights file's SHA-256
    shipped: bool  # the weights msrfnet ships (their model card and validation go in the README)
    opset: int
    rgb: np.ndarray  # the sample image resized to the model size (H×W×3 uint8)
    x: np.ndarray  # the test input, 1×3×H×W uint8
    y: np.ndarray  # onnxruntime's output for it, 1×1×H×W float32
    torchscript: bool


def _plan(onnx_path: Path, weights_path: Path, config, torchscript: bool) -> _Package:
    """Check the ONNX model and run it on the sample image: the :class:`_Package` to build."""
    import onnx
    import onnxruntime as ort

    for path in (onnx_path, weights_path):
        if not path.is_file():
            raise MSRFError(f"{path}: no such file")
    sha = file_digest(weights_path)
    shipped = SHIPPED_WEIGHTS.is_file() and sha == file_digest(SHIPPED_WEIGHTS)
    opset = next(
        o.version
        for o in onnx.load(str(onnx_path), load_external_data=False).opset_import
        if o.domain in ("", "ai.onnx")
    )
    rgb = resize_image(read_image(sample_root() / SAMPLE), config.image_size)
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])  # 1×3×H×W uint8
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    _check_onnx(session, onnx_path, config)
    log.info("bioimageio: running %s on the sample image", onnx_path.name)
    y = session.run(["probability"], {"image": x})[0].astype(np.float32)
    return _Package(onnx_path, weights_path, config, sha, shipped, opset, rgb, x, y, torchscript)


def _write_sources(package: _Package, src: Path) -> tuple[dict[str, Path], str | None]:
    """Every file of the package into ``src``; (their paths by role, the TorchScript weights'
    torch version or None)."""
    import tifffile

    src.mkdir()
    files = {k: src / f for k, f in SOURCES.items()}
    shutil.copyfile(package.onnx_path, files["onnx"])
    x, y, rgb = package.x, package.y, package.rgb
    np.save(files["test_input"], x)
    np.save(files["test_output"], y)
    tifffile.imwrite(files["sample_input"], x, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(files["sample_output"], y)
    mask = y[0, 0] >= package.config.threshold  # cover: image | image with the predicted mask
    files["cover"].write_bytes(encode_png(np.concatenate([rgb, draw_overlay(rgb, mask)], 1)))
    torch_version = None
    if package.torchscript:
        import torch

        log.info("bioimageio: tracing the TorchScript weights")
        files["torchscript"] = src / "msrfnet.pt"
        _torchscript(package.weights_path, package.config, x, files["torchscript"])
        torch_version = torch.__version__.split("+")[0]
    readme = readme_text(
        shipped=package.shipped,
        weights_name=package.weights_path.name,
        sha=package.sha,
        config=package.config,
        opset=package.opset,
        torch_version=torch_version,
    )
    files["readme"].write_text(readme, encoding="utf-8")
    return files, torch_version


def _build(package: _Package, work: Path, out: Path) -> Path:
    """Write the package's files into ``work`` and save the package there (a zip when ``out``
    ends with ``.zip``, else a folder); returns the saved package's path."""
    import bioimageio.spec.model.v0_5 as v
    from bioimageio import spec

    files, torch_version = _write_sources(package, work / "src")
    try:
        descr = describe(
            v,
            files,
            name=NAMES[package.shipped],
            shipped=package.shipped,
            size=package.config.image_size,
            opset=package.opset,
            torch_version=torch_version,
        )
    except ValueError as error:  # pydantic's ValidationError: say its first error
        first = error.errors()[0] if hasattr(error, "errors") else None
        why = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else first_line(error)
        raise MSRFError(f"{out}: bioimageio.spec refuses the package: {why}") from None
    if out.suffix.lower() == ".zip":
        return Path(spec.save_bioimageio_package(descr, output_path=work / "package.zip"))
    return Path(spec.save_bioimageio_package_as_folder(descr, output_path=work / "package"))


@contextlib.contextmanager
def _work_folder(beside: Path):
    """A temporary folder next to ``beside`` (same file system: the result is renamed), removed
    afterwards."""
    work = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", dir=beside.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def package_bioimageio(
    onnx_path: str | Path,
    out: str | Path,
    *,
    weights_path: str | Path,
    config,
    torchscript: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the bioimage.io package of ``onnx_path`` (msrf's single-input ONNX model of
    ``weights_path``, whose :class:`~msrfnet.config.Config` is ``config``) to ``out``: a folder,
    or a zip when ``out`` ends with ``.zip``. ``torchscript`` adds a traced second format.
    Progress is logged at INFO.

    ``out`` is checked first (:func:`msrfnet.export.destination.check_destination`). A zip is
    written as any export file: atomically, recorded in its folder's manifest, an earlier one
    replaced only with ``overwrite``. A folder is built in a temporary folder next to ``out``,
    then renamed onto it; an existing folder is replaced only with ``overwrite`` and only when it
    is an earlier package of this function holding nothing else.

    Raises:
        MSRFError: bioimageio.core missing, an ``out`` that may not be written, an ONNX model that
            is not the single-input one, or a package that bioimageio.spec refuses.
    """
    _require_extras()
    onnx_path, out, weights_path = Path(onnx_path), Path(out), Path(weights_path)
    destination = check_destination(
        out,
        "bioimageio",
        inputs=[weights_path.parent],
        overwrite=overwrite,
        option="--bioimageio",
    )
    package = _plan(onnx_path, weights_path, config, torchscript)
    if destination.folder is not None:  # a zip: one file, as any export

        def write(tmp: str) -> None:
            with _work_folder(Path(tmp)) as work:
                shutil.move(_build(package, work, out), tmp)

        destination.write_file(write)
    else:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with _work_folder(out) as work:
                built = _build(package, work, out)
                if out.exists():  # overwrite: our own earlier package, moved away just before
                    out.rename(work / "old")
                built.rename(out)
        except OSError as error:
            raise io_error(out, error) from None
    log.info("bioimageio: wrote %s", out)
    return out

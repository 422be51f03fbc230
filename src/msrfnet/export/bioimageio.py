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

import hashlib
import logging
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from msrfnet.data import read_image, resize_image, sample_root
from msrfnet.errors import MSRFError, first_line
from msrfnet.model.loading import load_model
from msrfnet.model.pipeline import EXPORT_HYSTERESIS_ITERATIONS, ImageToProbability
from msrfnet.overlay import draw_overlay, encode_png
from msrfnet.weights.resolve import SHIPPED_WEIGHTS

__all__ = [
    "NAMES",
    "NEEDS",
    "SAMPLE",
    "PAPER",
    "DOI",
    "TAGS",
    "NUCLEI_TAGS",
    "SHIPPED_FACTS",
    "OTHER_FACTS",
    "README",
    "package_bioimageio",
]

log = logging.getLogger("msrfnet")

NAMES = {True: "MSRF-Net nuclei segmentation", False: "MSRF-Net segmentation"}  # shipped or not
NEEDS = "msrf export --bioimageio needs bioimageio.core: pip install -e '.[bioimageio]'"
#: the real (CC0) image of the test tensors and the cover: fluorescence nuclei of the test split
SAMPLE = "test/images/449a9c32e53a37c8a86e01c199155c8da3958b631088e10f6fe43c2119defe51.png"
PAPER = (
    "Srivastava A, Jha D, Chanda S, Pal U, Johansen HD, Johansen D, Riegler MA, Ali S, "
    "Halvorsen P. MSRF-Net: A Multi-Scale Residual Fusion Network for Biomedical Image "
    "Segmentation. IEEE Journal of Biomedical and Health Informatics, 2022."
)
DOI = "10.1109/JBHI.2021.3138024"
TAGS = [
    "segmentation",
    "semantic-segmentation",
    "2d",
    "onnx",
    "torchscript",
    "pytorch",
    "msrf-net",
    "msrfnet",
]
NUCLEI_TAGS = ["nuclei", "fluorescence-light-microscopy", "brightfield", "histology"]

SHIPPED_FACTS = {
    "data": "2018 Data Science Bowl stage1_train nuclei images (BBBC038v1, Caicedo et al., "
    "Nature Methods 2019), licence **CC0 1.0**: 670 fluorescence and brightfield/H&E "
    "images, seeded random split 536 / 67 / 67 (train / val / test).",
    "validation": "On the 67 test images at 256² (threshold 0.5): mean per-image DSC **0.9176**, "
    "pooled mIoU 0.8478, recall 0.9334, precision 0.9025 (the paper reports DSC "
    "0.9224 on its own split). The ONNX graph equals PyTorch to 4e-6 on real images.",
    "licence": "Code and weights: MIT (msrfnet). Training data: CC0 1.0. Not for clinical use.",
}
OTHER_FACTS = {
    "data": "Not recorded: these are not the weights msrfnet ships. Describe the training data "
    "and its licence here before sharing the package.",
    "validation": "Not recorded by this package: see the run that trained the weights.",
    "licence": "Code: MIT (msrfnet). Weights: MIT unless their training data says otherwise.",
}

README = """# {name}

MSRF-Net (Srivastava et al., IEEE JBHI 2022, doi:{doi}): one probability map per image.
Packaged by msrfnet from `{weights}` (sha256 {sha}). Weights formats: {formats}.

## How to use: input size and scale

- Input `image`: **uint8 RGB**, axes batch, channel (r, g, b), y, x. A grey image: repeat it
  into three channels; 16-bit or float: stretch min–max to 0–255 first.
- **Resize the whole image to {size}×{size}** (Pillow Lanczos), **not keeping the aspect ratio**:
  the training protocol squashes every image to {size}² whatever its shape, so the model knows
  nuclei at the scale they have after that resize (the 2018 DSB images are 256×256 to 1040×1388
  pixels). Do not tile a large image at its native resolution. The graph accepts any height and
  width that are multiples of 8 (≥ 64), but it is validated at {size}² only.
- Do not normalise: the [0, 1] scaling and the Canny edge map (thresholds {low}, {high}: the
  network's second input in the paper) are computed inside the model. The Canny hysteresis runs a
  fixed {steps} steps in these graphs (enough at 256²; an edge chain that needs more on a much
  larger image is cut short).
- Output `probability`: float32, batch × 1 × y × x, in [0, 1]. Mask = probability ≥ **{thr}**
  (the threshold of the reported metrics); resize it back to the original image size.

## Training data

{data}

## Validation

{validation} The test tensors and the cover come from a test-split image ({sample}…, not seen in
training); `bioimageio test` reproduces the test output with every weights format (rtol and atol
1e-3) and runs the model at several sizes and batch sizes.

## Licence

{licence}

## Model card

{card}

## Citation

{paper} doi:{doi}
"""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_ours(path: Path) -> bool:
    """Whether ``path`` (folder or zip) is an earlier package of this module: its rdf.yaml has
    one of our names."""
    import yaml

    try:
        if path.is_dir():
            text = (path / "rdf.yaml").read_text(encoding="utf-8")
        else:
            with zipfile.ZipFile(path) as z:
                text = z.read("rdf.yaml").decode("utf-8")
        rdf = yaml.safe_load(text)
    except (OSError, KeyError, zipfile.BadZipFile, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(rdf, dict) and rdf.get("name") in NAMES.values()


def _card(path: Path) -> str:
    """The shipped weights' model card, its headings demoted under the README's "Model card"."""
    text = re.sub(r"^#", "###", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return (
        "(It describes the PyTorch weights; in this package the Canny map and the scaling are "
        "inside the model.)\n\n" + text
    )


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


def _describe(
    v,
    files: dict[str, Path],
    *,
    name: str,
    shipped: bool,
    size: int,
    opset: int,
    torch_version: str | None,
):
    """The :class:`ModelDescr` of ``files`` (absolute paths; the save copies them)."""
    image = v.TensorId("image")
    axes_in = [v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(c) for c in "rgb"])]
    axes_out = [v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("probability")])]
    for a in (v.AxisId("y"), v.AxisId("x")):
        axes_in.append(v.SpaceInputAxis(id=a, size=v.ParameterizedSize(min=64, step=8)))
        axes_out.append(v.SpaceOutputAxis(id=a, size=v.SizeReference(tensor_id=image, axis_id=a)))
    weights = {"onnx": v.OnnxWeightsDescr(source=files["onnx"], opset_version=opset)}
    if torch_version:  # no `parent`: traced from the PyTorch module, not converted from the ONNX
        weights["torchscript"] = v.TorchscriptWeightsDescr(
            source=files["torchscript"],
            pytorch_version=v.Version(torch_version),
            comment="torch.jit.trace of the module the ONNX graph was exported from",
        )
    what = "nuclei " if shipped else ""
    return v.ModelDescr(
        name=name,
        description=f"MSRF-Net {what}segmentation: uint8 RGB resized to {size}x{size} in, "
        f"{what}probability out (the Canny edge input is computed in the graph).",
        authors=[v.Author(name="msrfnet contributors")],
        cite=[v.CiteEntry(text=PAPER, doi=v.Doi(DOI))],
        license=v.LicenseId("MIT"),
        tags=(NUCLEI_TAGS if shipped else []) + TAGS,
        documentation=v.FileDescr(source=files["readme"]),
        covers=[v.FileDescr(source=files["cover"])],
        inputs=[
            v.InputTensorDescr(
                id=image,
                axes=axes_in,
                description=f"RGB uint8, resized to {size}x{size} (aspect ratio not kept)",
                test_tensor=v.FileDescr(source=files["test_input"]),
                sample_tensor=v.FileDescr(source=files["sample_input"]),
                data=v.IntervalOrRatioDataDescr(type="uint8", range=(0, 255)),
            )
        ],
        outputs=[
            v.OutputTensorDescr(
                id=v.TensorId("probability"),
                axes=axes_out,
                description=f"{what}probability in [0, 1] (mask: probability >= threshold)",
                test_tensor=v.FileDescr(source=files["test_output"]),
                sample_tensor=v.FileDescr(source=files["sample_output"]),
                data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            )
        ],
        weights=v.WeightsDescr(**weights),
    )


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

    Built in a temporary folder next to ``out``, then renamed onto it. An existing ``out`` is
    replaced only with ``overwrite`` and only when it is an earlier package of this function.

    Raises:
        MSRFError: bioimageio.core missing, an ``out`` that may not be written, an ONNX model that
            is not the single-input one, or a package that bioimageio.spec refuses.
    """
    try:
        import bioimageio.spec.model.v0_5 as v
        import tifffile  # a dependency of bioimageio.spec
        from bioimageio import spec
    except ImportError as error:
        raise MSRFError(f"{NEEDS} ({first_line(error)})") from None
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as error:
        raise MSRFError(
            f"msrf export --bioimageio needs onnx and onnxruntime: pip install -e "
            f"'.[onnx,bioimageio]' ({first_line(error)})"
        ) from None

    onnx_path, out, weights_path = Path(onnx_path), Path(out), Path(weights_path)
    if out.exists() and not (overwrite and _is_ours(out)):
        why = (
            "exists (pass overwrite to replace it)"
            if _is_ours(out)
            else "exists and is not an msrf bioimage.io package; choose another path"
        )
        raise MSRFError(f"{out}: {why}")
    for path in (onnx_path, weights_path):
        if not path.is_file():
            raise MSRFError(f"{path}: no such file")
    sha = _sha256(weights_path)
    shipped = SHIPPED_WEIGHTS.is_file() and sha == _sha256(SHIPPED_WEIGHTS)
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

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        src = work / "src"
        src.mkdir()
        files = {
            k: src / f
            for k, f in [
                ("onnx", "msrfnet.onnx"),
                ("readme", "README.md"),
                ("cover", "cover.png"),
                ("test_input", "test_input.npy"),
                ("sample_input", "sample_input.tif"),
                ("test_output", "test_output.npy"),
                ("sample_output", "sample_output.tif"),
            ]
        }
        shutil.copyfile(onnx_path, files["onnx"])
        np.save(files["test_input"], x)
        np.save(files["test_output"], y)
        tifffile.imwrite(files["sample_input"], x, photometric="rgb", planarconfig="separate")
        tifffile.imwrite(files["sample_output"], y)
        mask = y[0, 0] >= config.threshold  # cover: image | image with the predicted mask
        files["cover"].write_bytes(encode_png(np.concatenate([rgb, draw_overlay(rgb, mask)], 1)))
        torch_version = None
        if torchscript:
            import torch

            log.info("bioimageio: tracing the TorchScript weights")
            files["torchscript"] = src / "msrfnet.pt"
            _torchscript(weights_path, config, x, files["torchscript"])
            torch_version = torch.__version__.split("+")[0]
        name = NAMES[shipped]
        files["readme"].write_text(
            README.format(
                name=name,
                doi=DOI,
                weights=weights_path.name,
                sha=sha,
                size=config.image_size,
                formats=f"ONNX (opset {opset})"
                + (f", TorchScript (torch {torch_version})" if torch_version else ""),
                low=config.canny_low,
                high=config.canny_high,
                steps=EXPORT_HYSTERESIS_ITERATIONS,
                thr=config.threshold,
                sample=Path(SAMPLE).name[:8],
                paper=PAPER,
                card=_card(SHIPPED_WEIGHTS.parent / "MODEL_CARD.md")
                if shipped
                else "Not recorded: not the weights msrfnet ships.",
                **(SHIPPED_FACTS if shipped else OTHER_FACTS),
            ),
            encoding="utf-8",
        )
        try:
            descr = _describe(
                v,
                files,
                name=name,
                shipped=shipped,
                size=config.image_size,
                opset=opset,
                torch_version=torch_version,
            )
        except ValueError as error:  # pydantic's ValidationError: say its first error
            first = error.errors()[0] if hasattr(error, "errors") else None
            why = (
                f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
                if first
                else first_line(error)
            )
            raise MSRFError(f"{out}: bioimageio.spec refuses the package: {why}") from None
        if out.suffix.lower() == ".zip":
            built = spec.save_bioimageio_package(descr, output_path=work / "package.zip")
        else:
            built = spec.save_bioimageio_package_as_folder(descr, output_path=work / "package")
        if out.exists():  # overwrite: our own earlier package, moved away just before
            out.rename(work / "old")
        Path(built).rename(out)
    except OSError as error:
        from msrfnet.safe_output import io_error

        raise io_error(out, error) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("bioimageio: wrote %s", out)
    return out

"""What an ``msrf export --bioimageio`` package says about itself: its description for
bioimageio.spec (``rdf.yaml``: axes, tensors, weights formats, citation, licence, tags) and its
README (the model card, how to size and scale the input, training data, validation).

:mod:`msrfnet.export.bioimageio` writes the package; the offline rules of its docstring (no URL,
no ``github_user``) hold for everything here.
"""

from __future__ import annotations

import re
from pathlib import Path

from msrfnet.export.destination import PACKAGE_NAMES
from msrfnet.model.pipeline import EXPORT_HYSTERESIS_ITERATIONS
from msrfnet.weights.resolve import SHIPPED_WEIGHTS

__all__ = [
    "SAMPLE",
    "PAPER",
    "DOI",
    "TAGS",
    "NUCLEI_TAGS",
    "SHIPPED_FACTS",
    "OTHER_FACTS",
    "README",
    "describe",
    "readme_text",
]

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


def _card(path: Path) -> str:
    """The shipped weights' model card, its headings demoted under the README's "Model card"."""
    text = re.sub(r"^#", "###", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return (
        "(It describes the PyTorch weights; in this package the Canny map and the scaling are "
        "inside the model.)\n\n" + text
    )


def describe(
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


def readme_text(
    *, shipped: bool, weights_name: str, sha: str, config, opset: int, torch_version: str | None
) -> str:
    """The package's README.md: the model card, the size and scale rules, data and validation.
    ``shipped``: the weights msrfnet ships (their card, data and validation), ``sha`` their
    file's SHA-256, ``config`` their Config; ``torch_version`` that of the TorchScript weights
    (None: ONNX only)."""
    return README.format(
        name=PACKAGE_NAMES[0 if shipped else 1],
        doi=DOI,
        weights=weights_name,
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
    )

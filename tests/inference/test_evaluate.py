"""``msrf evaluate PRED GT``: any two folders (or files) paired by stem; pixel metrics at the
images' own size, object metrics for label images or with ``--instances``; the output rules."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from _logs import said
from PIL import Image

from msrfnet.cli import main
from msrfnet.errors import MSRFError
from msrfnet.inference.evaluate import evaluate, plan_evaluate, score
from msrfnet.option_groups import ModelSource, Objects, Outputs


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)
    return path


def squares(h: int = 16, w: int = 20) -> np.ndarray:
    """Two 4×4 objects (labels 1, 2) and one 2×8 object (label 3): 16 + 16 + 16 = 48 px."""
    lab = np.zeros((h, w), np.uint16)
    lab[1:5, 1:5] = 1
    lab[8:12, 8:12] = 2
    lab[14:16, 2:10] = 3
    return lab


def touching() -> np.ndarray:
    """Two touching discs of radius 5 (labels 1, 2) on 24×32."""
    yy, xx = np.mgrid[:24, :32]
    lab = np.zeros((24, 32), np.uint16)
    lab[(yy - 12) ** 2 + (xx - 10) ** 2 <= 25] = 1
    lab[(yy - 12) ** 2 + (xx - 19) ** 2 <= 25] = 2
    return lab


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_label_folders_give_object_and_pixel_metrics(tmp_path):
    gt = squares()
    pred = gt.copy()
    pred[8:12, 10:12] = 0  # object 2 halved: IoU 0.5, no match; pixels 40 of 48
    save(tmp_path / "gt" / "a.png", gt)
    save(tmp_path / "gt" / "b.png", gt)
    save(tmp_path / "pred" / "a.png", gt)
    save(tmp_path / "pred" / "b.tif", pred)  # any format: paired by stem
    result = evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "out")
    assert result["object_metrics"] is True and result["n_images"] == 2
    # a: everything right; b: TP 2, FP 1, FN 1 at every threshold -> 1/2; F1 = 4/6
    assert result["dsb_map"] == pytest.approx((1 + 0.5) / 2)
    assert result["f1_iou50"] == pytest.approx((1 + 4 / 6) / 2)
    assert result["count_error"] == 0
    # pixels: a DSC 1; b 2·40/(40+48)
    assert result["dsc"] == pytest.approx((1 + 80 / 88) / 2)
    rows = read_csv(tmp_path / "out" / "metrics.csv")
    assert [r["stem"] for r in rows] == ["a", "b"] and rows[1]["prediction"] == "b.tif"
    assert float(rows[1]["dsb_ap"]) == pytest.approx(0.5) and rows[1]["tp50"] == "2"
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["dsb_map"] == pytest.approx(0.75) and saved["protocol"].startswith("each image")


def test_a_predict_output_folder_as_pred(tmp_path):
    # msrf predict --instances --probabilities --overlay writes these; the labels are the objects
    gt = touching()
    save(tmp_path / "gt" / "cell.png", gt)
    out = tmp_path / "predicted"
    save(out / "cell.png", np.where(gt > 0, 255, 0).astype(np.uint8))
    save(out / "cell_labels.tif", gt)
    save(out / "cell_prob.png", np.where(gt > 0, 60000, 100).astype(np.uint16))
    save(out / "cell_overlay.png", np.zeros((24, 32, 3), np.uint8))
    (out / "cell_objects.csv").write_text("label,area\n")
    (out / "objects_summary.csv").write_text("stem,count\ncell,2\n")
    with said() as lines:
        result = evaluate(out, tmp_path / "gt", out=tmp_path / "o")
    assert result["object_metrics"] and result["dsb_map"] == 1.0 and result["dsc"] == 1.0
    assert not any("left out" in line for line in lines)  # overlays and CSVs are not predictions
    assert "DSB 2018 score" in "\n".join(lines)


def test_instances_split_binary_predictions(tmp_path):
    gt = touching()
    save(tmp_path / "gt" / "c.png", gt)
    save(tmp_path / "pred" / "c.png", np.where(gt > 0, 255, 0).astype(np.uint8))
    with said() as lines:
        plain = evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "o1")
    assert plain["object_metrics"] is False and "dsb_map" not in plain
    assert any("pass --instances" in line for line in lines)
    assert "dsb_ap" not in read_csv(tmp_path / "o1" / "metrics.csv")[0]
    split = evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "o2", objects=Objects())
    # the watershed separates the two discs; their boundary may differ from the truth's by a
    # column, which leaves both IoUs well above 0.5
    assert split["object_metrics"] and split["f1_iou50"] == 1.0 and split["count_error"] == 0
    assert split["split_predictions"] == 1 and split["seed_distance"] == 5
    assert 0.5 < split["dsb_map"] <= 1.0
    merged = evaluate(
        tmp_path / "pred",
        tmp_path / "gt",
        out=tmp_path / "o3",
        objects=Objects(seed_distance=20),  # the two centres are 9 px apart: one object
    )
    # the blob holds all of disc 2 (which overwrote the lens both discs share) and the rest of
    # disc 1: IoU > 0.5 with disc 2 only -> TP 1, FN 1, F1 2/3
    assert merged["count_error"] == 1 and merged["f1_iou50"] == pytest.approx(2 / 3)


def test_probability_maps_are_thresholded(tmp_path):
    gt = np.zeros((10, 12), np.uint8)
    gt[2:8, 2:8] = 255
    prob = np.zeros((10, 12), np.float32)
    prob[2:8, 2:8] = 0.7
    prob[2:8, 2:5] = 0.4  # below 0.5, above 0.3
    save(tmp_path / "gt" / "p.png", gt)
    save(tmp_path / "pred" / "p.tif", prob)
    half = evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "o1")
    assert half["dsc"] == pytest.approx(2 * 18 / (18 + 36))
    low = evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "o2", threshold=0.3)
    assert low["dsc"] == 1.0
    save(tmp_path / "pred16" / "p_prob.png", np.rint(prob * 65535).astype(np.uint16))
    sixteen = evaluate(tmp_path / "pred16", tmp_path / "gt", out=tmp_path / "o3")
    assert sixteen["dsc"] == pytest.approx(half["dsc"])


def test_mask_suffix_files_and_overlays(tmp_path):
    gt = np.zeros((20, 24), np.uint8)
    gt[4:12, 4:12] = 255
    for stem, shift in (("ISIC_1", 0), ("ISIC_2", 3)):
        save(tmp_path / "gt" / f"{stem}_segmentation.png", gt)
        save(tmp_path / "pred" / f"{stem}.png", np.roll(gt, shift, axis=1))
        save(tmp_path / "img" / f"{stem}.jpg", np.full((20, 24, 3), 90, np.uint8))
    with pytest.raises(MSRFError, match="no prediction with stem 'ISIC_1_segmentation'"):
        evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "o")
    result = evaluate(
        tmp_path / "pred",
        tmp_path / "gt",
        out=tmp_path / "o",
        mask_suffix="_segmentation",
        images=tmp_path / "img",
    )
    assert result["n_images"] == 2
    panels = sorted(p.name for p in (tmp_path / "o" / "overlays").iterdir())
    assert panels == ["best_01_ISIC_1.png", "best_02_ISIC_2.png"] + [
        "worst_01_ISIC_2.png",
        "worst_02_ISIC_1.png",
    ]
    # two files pair whatever their names
    one = evaluate(
        tmp_path / "pred" / "ISIC_2.png",
        tmp_path / "gt" / "ISIC_2_segmentation.png",
        out=tmp_path / "o1",
    )
    assert one["dsc"] == pytest.approx(2 * 40 / 128)


def test_refusals(tmp_path):
    gt = squares()
    save(tmp_path / "gt" / "a.png", gt)
    save(tmp_path / "gt" / "b.png", gt)
    save(tmp_path / "pred" / "a.png", gt)
    with pytest.raises(MSRFError, match="b.png: no prediction with stem 'b'"):
        evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "o")
    save(tmp_path / "pred" / "b.png", gt[:, :10])
    with pytest.raises(MSRFError, match="b.png: 10×16 pixels, its truth .* 20×16"):
        evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "o")
    masks = tmp_path / "masks"
    save(masks / "a.png", np.where(gt > 0, 255, 0).astype(np.uint8))
    with pytest.raises(MSRFError, match="--instances: GT .* holds no label image"):
        evaluate(tmp_path / "pred", masks, out=tmp_path / "o", objects=Objects())
    with pytest.raises(MSRFError, match="lies inside the input folder"):
        evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "gt" / "o")
    with pytest.raises(MSRFError, match="give two folders or two files"):
        evaluate(tmp_path / "pred" / "a.png", tmp_path / "gt", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_outputs_are_never_replaced_without_leave(tmp_path, capsys):
    gt = squares()
    save(tmp_path / "gt" / "a.png", gt)
    save(tmp_path / "pred" / "a.png", gt)
    save(tmp_path / "pred" / "extra.png", gt)
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "left out: 1 prediction(s) without a truth (extra)" in printed
    assert "DSB 2018 score" in printed and "1.0000" in printed
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.json: exists" in err[0] and "--overwrite" in err[0]
    assert main([*args, "--overwrite", "--instances", "--min-size", "0"]) == 0
    (tmp_path / "o" / "metrics.json").write_text("{}")  # the user's edit is theirs
    assert main([*args, "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (tmp_path / "o" / "metrics.json").read_text() == "{}"


# --- msrf test --instances, and the agreement of test with predict + evaluate --------------------


@pytest.fixture(scope="module")
def instance_data(tmp_path_factory):
    """A 3-image test split of blob images, its instance labels (connected components of the
    masks) and small random weights."""
    from _data_helpers import make_dataset
    from _model_helpers import make_weights
    from skimage.measure import label

    root = make_dataset(tmp_path_factory.mktemp("data"), {"test": 3}, size=(40, 48))
    labels = tmp_path_factory.mktemp("labels")
    n_objects = 0
    for mask in sorted((root / "test" / "masks").glob("*.png")):
        lab = label(np.asarray(Image.open(mask)) > 0).astype(np.uint16)
        n_objects += int(lab.max())
        save(labels / mask.name, lab)
    weights = make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=32)
    return root, labels, weights, n_objects


def test_msrf_test_instances_agrees_with_predict_and_evaluate(instance_data, tmp_path, capsys):
    from msrfnet.inference.predict import predict
    from msrfnet.inference.test import test

    root, labels, weights, n_objects = instance_data
    model = ModelSource(weights=str(weights), threshold=0.5, exact=True)
    tested = test(
        root,
        model=model,
        objects=Objects(),
        instances_gt=labels,
        out=tmp_path / "t",
    )
    assert tested["n_gt_objects"] == n_objects and 0 <= tested["dsb_map"] <= 1
    row = read_csv(tmp_path / "t" / "metrics.csv")[0]
    assert {"orig_dsc", "dsb_ap", "f1_iou50", "count_error"} <= set(row)
    predict(
        [root / "test" / "images"], model=model, objects=Objects(), outputs=Outputs(tmp_path / "p")
    )
    scored = evaluate(tmp_path / "p", labels, out=tmp_path / "e")
    # the same probabilities, split the same way: the same figures
    assert scored["object_metrics"]
    for key in ("dsb_map", "f1_iou50", "count_error", "n_pred_objects", "n_gt_objects"):
        assert scored[key] == pytest.approx(tested[key], abs=1e-9), key
    assert scored["dsc"] == pytest.approx(tested["orig_dsc"], abs=1e-9)
    code = main(
        ["test", "--data", str(root), "--weights", str(weights), "--out", str(tmp_path / "t2")]
        + ["--instances", "--instances-gt", str(labels), "--exact"]
    )
    assert code == 0 and "DSB 2018 score" in capsys.readouterr().out


def test_msrf_test_instances_refusals(instance_data, tmp_path):
    from msrfnet.inference.test import test

    root, labels, weights, _ = instance_data
    model = ModelSource(weights=str(weights))
    with pytest.raises(MSRFError, match="--instances: pass --instances-gt DIR"):
        test(root, model=model, out=tmp_path / "o", objects=Objects())
    with pytest.raises(MSRFError, match="--instances-gt: pass --instances too"):
        test(root, model=model, out=tmp_path / "o", instances_gt=labels)
    partial = tmp_path / "partial"
    partial.mkdir()
    first = sorted(labels.iterdir())[0]
    (partial / first.name).write_bytes(first.read_bytes())
    with pytest.raises(MSRFError, match=r"no label image with stem 's001' \(and 1 more\)"):
        test(root, model=model, out=tmp_path / "o", objects=Objects(), instances_gt=partial)
    assert not (tmp_path / "o").exists()


def test_plan_then_score(tmp_path):
    gt = touching()
    save(tmp_path / "gt" / "c.png", gt)
    save(tmp_path / "pred" / "c.png", np.where(gt > 0, 255, 0).astype(np.uint8))
    save(tmp_path / "pred" / "c_overlay.png", np.zeros((24, 32, 3), np.uint8))
    plan = plan_evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "o", objects=Objects())
    assert [it.stem for it in plan.items] == ["c"] and plan.items[0].mask.name == "c.png"
    assert plan.gt_labels and plan.objects == Objects() and not plan.overlays
    assert plan.out == tmp_path / "o" and not plan.out.exists()  # planning writes nothing
    result = score(plan)
    assert result["split_predictions"] == 1 and result["min_size"] == 15
    assert (tmp_path / "o" / "metrics.json").is_file()
    with pytest.raises(MSRFError, match="threshold 2"):
        plan_evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "o2", threshold=2)
    with pytest.raises(MSRFError, match="--out .*: is the input folder .*pred"):
        plan_evaluate(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "pred")

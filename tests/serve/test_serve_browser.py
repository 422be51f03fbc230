"""The ``msrf serve`` page in a real browser: headless Chromium (Debian's ``chromium``) loads the
page from a uvicorn server on loopback, a user picks three bundled sample images (two dark
fluorescence fields, one H&E), and the test waits for the overlays, checks that they are drawn
(and that the layer toggles change the picture), and saves a screenshot that must not be blank.

Skipped, with the reason printed, only where chromium is not installed (``.ci/run`` installs it).
Set ``MSRF_SERVE_SCREENSHOT=docs/img/serve.png`` to also write the screenshot there.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="msrf serve needs the serve extra (fastapi)")
pytest.importorskip("uvicorn", reason="msrf serve needs the serve extra (uvicorn)")
pytest.importorskip("websocket", reason="the browser test drives Chromium with websocket-client")

from _browser import Browser, Server, chromium_path  # noqa: E402

from msrfnet.data import sample_root  # noqa: E402
from msrfnet.serve.app import create_app  # noqa: E402
from msrfnet.serve.service import InferenceService, Segmenter, model_card  # noqa: E402

SAMPLES = ("d4d88391", "8e8a7a14", "2e2d29fc")  # dark, dark, H&E (the bundled test split)

# For one card: how many canvas pixels differ from the auto-contrasted image, and the mask size.
OVERLAY_STATS = """
(() => {
  const card = document.querySelectorAll('.result.done')[%d];
  const c = card.querySelector('canvas'), L = card.layers;
  const got = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const shown = L.display.data, mask = L.mask.data;
  let changed = 0, masked = 0;
  for (let i = 0; i < got.length; i += 4) {
    if (got[i] !== shown[i] || got[i + 1] !== shown[i + 1] || got[i + 2] !== shown[i + 2]) {
      changed++;
    }
    if (mask[i] > 127) masked++;
  }
  return {changed, masked, width: c.width, height: c.height,
          fraction: card.querySelector('.fraction').textContent,
          count: card.querySelector('.count').textContent,
          name: card.querySelector('.name').textContent};
})()
"""


def toggle(browser: Browser, index: int, cls: str, on: bool) -> None:
    browser.evaluate(f"""(() => {{
      const box = document.querySelectorAll('.result.done')[{index}].querySelector('.{cls}');
      box.checked = {str(on).lower()};
      box.dispatchEvent(new Event('input'));
    }})()""")


@pytest.fixture(scope="module")
def app():
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter.from_pretrained(None, device="cpu")  # the shipped nuclei weights
    return create_app(InferenceService(segmenter, card=model_card(None, segmenter)))


def test_page_uploads_shows_overlays_and_screenshot_is_not_blank(app, tmp_path):
    images = sorted((sample_root() / "test" / "images").glob("*.png"))
    chosen = [next(f for f in images if f.name.startswith(s)) for s in SAMPLES]
    with Server(app) as url:
        browser = Browser(tmp_path / "profile")
        try:
            browser.goto(url + "/")
            browser.wait_for("document.querySelector('#model').textContent.includes('DSC')", 30)
            browser.set_files("#file", chosen)
            browser.wait_for(
                "document.querySelectorAll('.result.done').length === 3 || "
                "document.querySelector('.result.failed')",
                180,
            )
            failed = browser.evaluate(
                "[...document.querySelectorAll('.result.failed .status')].map(e => e.textContent)"
            )
            assert failed == []
            stats = [browser.evaluate(OVERLAY_STATS % i) for i in range(3)]
            for s in stats:
                assert (s["width"], s["height"]) == (256, 256), s
                assert s["masked"] > 500 and s["changed"] >= s["masked"], s  # overlay drawn
                assert s["fraction"].endswith("%") and int(s["count"]) > 0, s
            # the toggles: no layer → exactly the display image; the heat map alone → changed
            toggle(browser, 0, "show-mask", False)
            toggle(browser, 0, "show-outlines", False)
            assert browser.evaluate(OVERLAY_STATS % 0)["changed"] == 0
            toggle(browser, 0, "show-heat", True)
            assert browser.evaluate(OVERLAY_STATS % 0)["changed"] > 256 * 256 // 2
            toggle(browser, 0, "show-heat", False)
            toggle(browser, 0, "show-mask", True)
            toggle(browser, 0, "show-outlines", True)
            toggle(browser, 1, "show-mask", False)  # the screenshot shows one heat map too
            toggle(browser, 1, "show-heat", True)
            browser.evaluate("window.scrollTo(0, 0)")
            shot = browser.screenshot()
        finally:
            browser.close()
    path = tmp_path / "serve.png"
    path.write_bytes(shot)
    print(f"screenshot: {path}")
    picture = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(np.float32)
    assert picture.shape[0] >= 600 and picture.shape[1] >= 1000
    assert picture.std() > 20  # not a blank page
    assert np.unique(picture.reshape(-1, 3), axis=0).shape[0] > 1000  # images, not just text
    target = os.environ.get("MSRF_SERVE_SCREENSHOT")
    if target:
        small = Image.open(io.BytesIO(shot)).convert("RGB").quantize(256, dither=Image.Dither.NONE)
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        small.save(target, optimize=True)

// msrf serve: the page. Plain JavaScript, no libraries, talks only to this server.
// Each dropped file is sent to POST /predict?format=json&images=true (one at a time: the server
// runs the model for one request at a time anyway) and shown as a card: the auto-contrasted image
// with the mask / probability / object-outline layers composed on a canvas.
"use strict";

const MASK_RGB = [255, 40, 200];     // magenta, as msrf predict --overlay
const OUTLINE_RGB = [255, 230, 40];  // yellow object outlines
// A dark-to-bright ramp for probabilities (black → purple → red → orange → pale yellow).
const HEAT_STOPS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];

const $ = (sel, root = document) => root.querySelector(sel);
const queue = [];
let busy = false;

function heat(v) {  // v in 0..255 → [r, g, b]
  const x = (v / 255) * (HEAT_STOPS.length - 1);
  const i = Math.min(Math.floor(x), HEAT_STOPS.length - 2);
  const f = x - i, a = HEAT_STOPS[i], b = HEAT_STOPS[i + 1];
  return [0, 1, 2].map((k) => a[k] + (b[k] - a[k]) * f);
}

function pixels(url) {  // a PNG data URL → its RGBA ImageData
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
      const g = c.getContext("2d");
      g.drawImage(img, 0, 0);
      resolve(g.getImageData(0, 0, c.width, c.height));
    };
    img.onerror = () => reject(new Error("the server sent an unreadable picture"));
    img.src = url;
  });
}

function compose(card) {
  // Redraw one card's canvas from its layers and its controls.
  const L = card.layers, canvas = $("canvas", card);
  const w = L.display.width, h = L.display.height;
  const out = new ImageData(new Uint8ClampedArray(L.display.data), w, h);
  const d = out.data, alpha = $(".opacity", card).value / 100;
  const showMask = $(".show-mask", card).checked;
  const showHeat = $(".show-heat", card).checked;
  const showOutlines = $(".show-outlines", card).checked && L.outlines;
  const m = L.mask.data, p = L.probability.data;
  const mk = (x, y) => x >= 0 && y >= 0 && x < w && y < h && m[4 * (y * w + x)] > 127;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = 4 * (y * w + x);
      if (showHeat) {
        const c = heat(p[i]);
        for (let k = 0; k < 3; k++) d[i + k] += (c[k] - d[i + k]) * alpha;
      }
      if (showMask && m[i] > 127) {
        const edge = !mk(x - 1, y) || !mk(x + 1, y) || !mk(x, y - 1) || !mk(x, y + 1);
        const a = edge && !showOutlines ? 1 : alpha * (showHeat ? 0.5 : 1);
        for (let k = 0; k < 3; k++) d[i + k] += (MASK_RGB[k] - d[i + k]) * a;
      }
      if (showOutlines && L.outlines.data[i] > 127) {
        for (let k = 0; k < 3; k++) d[i + k] = OUTLINE_RGB[k];
      }
    }
  }
  canvas.width = w;
  canvas.height = h;
  canvas.getContext("2d").putImageData(out, 0, 0);
  canvas.dataset.ready = "1";
}

function percent(x) {
  return (100 * x).toFixed(x < 0.1 ? 2 : 1) + " %";
}

async function show(card, answer) {
  const im = answer.images;
  card.layers = {
    display: await pixels(im.display),
    mask: await pixels(im.mask),
    probability: await pixels(im.probability),
    outlines: im.outlines ? await pixels(im.outlines) : null,
  };
  $(".size", card).textContent = `${answer.width}×${answer.height}`;
  $(".fraction", card).textContent = percent(answer.foreground_fraction);
  $(".count", card).textContent = answer.objects ? answer.objects.count : "off";
  $(".time", card).textContent = answer.seconds.total.toFixed(2) + " s";
  $(".show-outlines", card).disabled = !answer.objects;
  const stem = answer.file.replace(/\.[^.]*$/, "");
  const link = $(".download", card);
  link.href = im.mask;
  link.download = `${stem}_mask.png`;
  for (const input of card.querySelectorAll(".controls input")) {
    input.addEventListener("input", () => compose(card));
  }
  compose(card);
  card.classList.add("done");
  $(".status", card).textContent = `threshold ${answer.threshold}`;
}

async function predict(file, card) {
  const params = new URLSearchParams({ format: "json", images: "true" });
  params.set("instances", $("#instances").checked ? "true" : "false");
  const t = parseFloat($("#threshold").value);
  if (!Number.isNaN(t)) params.set("threshold", String(Math.min(1, Math.max(0, t))));
  const body = new FormData();
  body.append("image", file, file.name);
  $(".status", card).textContent = "segmenting…";
  const response = await fetch(`/predict?${params}`, { method: "POST", body });
  let answer;
  try {
    answer = await response.json();
  } catch (e) {
    throw new Error(`the server answered ${response.status} without JSON`);
  }
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  await show(card, answer);
}

async function drain() {
  if (busy) return;
  busy = true;
  while (queue.length) {
    const [file, card] = queue.shift();
    try {
      await predict(file, card);
    } catch (e) {
      card.classList.add("failed");
      $(".status", card).textContent = e.message;
    }
  }
  busy = false;
}

function add(files) {
  // The newest drop goes first, its files in the order chosen.
  const batch = document.createDocumentFragment();
  for (const file of files) {
    const card = $("#result").content.firstElementChild.cloneNode(true);
    $(".name", card).textContent = file.name;
    $(".name", card).title = file.name;
    batch.append(card);
    queue.push([file, card]);
  }
  $("#results").prepend(batch);
  drain();
}

async function loadModel() {
  const box = $("#model");
  try {
    const card = await (await fetch("/model")).json();
    const dsc = card.metrics && card.metrics["val/dsc"];
    const parts = [card.weights.file, card.model.numerics,
                   `input ${card.model.image_size}²`];
    if (dsc !== undefined) parts.push(`validation DSC ${Number(dsc).toFixed(4)}`);
    box.textContent = parts.join(" · ");
    $("#threshold").value = card.model.threshold;
    if (card.card) {
      $("#card-text").textContent = card.card;
    } else {
      $("#card-text").textContent = JSON.stringify(card, null, 2);
    }
  } catch (e) {
    box.textContent = "model card unavailable";
  }
}

function setup() {
  const drop = $("#drop"), input = $("#file");
  input.addEventListener("change", () => {
    add(input.files);
    input.value = "";
  });
  drop.addEventListener("click", (e) => {
    if (e.target === drop) input.click();
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") input.click();
  });
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const kind of ["dragleave", "drop"]) {
    drop.addEventListener(kind, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    add(e.dataTransfer.files);
  });
  // A file dropped beside the zone must not make the browser leave the page to open it.
  for (const kind of ["dragover", "drop"]) window.addEventListener(kind, (e) => e.preventDefault());
  loadModel();
}

setup();

// varattn explorer: the page over the JSON API of `varattn serve` (no build step, no other origin).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { runs: [], limits: {}, nmt: [], vqa: [], image: null, timer: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function status(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

async function call(path, body) {
  const init = body === undefined ? {} : body instanceof FormData
    ? { method: "POST", body }
    : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, init);
  let data;
  try { data = await response.json(); } catch (e) { data = { error: `${response.status} ${response.statusText}` }; }
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

const fmt = (p) => Number(p).toFixed(5);
const runInfo = (name) => state.runs.find((r) => r.name === name);

// -- start ------------------------------------------------------------------------------------------------
async function start() {
  try {
    const data = await call("/api/runs");
    state.runs = data.runs;
    state.limits = data.limits;
  } catch (e) { status(`cannot list the runs: ${e.message}`, true); return; }
  for (const task of ["nmt", "vqa"]) {
    const runs = state.runs.filter((r) => r.task === task);
    $(`tab-${task}`).hidden = runs.length === 0;
    for (const which of ["a", "b"]) {
      const select = $(`${task}-run-${which}`);
      runs.forEach((r, k) => select.append(el("option", { value: r.name, text: `${r.name} (${r.mode})` })));
      if (which === "b" && runs.length > 1) select.value = runs[1].name;
    }
    $(`tab-${task}`).addEventListener("click", () => show(task));
  }
  $("nmt-run-a").addEventListener("change", () => loadExamples("nmt"));
  $("vqa-run-a").addEventListener("change", () => { loadExamples("vqa"); fillAnswers(); });
  $("nmt-example").addEventListener("change", pickPair);
  $("nmt-form").addEventListener("submit", (e) => { e.preventDefault(); translate(); });
  $("nmt-merge").addEventListener("change", renderNmt);
  $("nmt-use-threshold").addEventListener("change", () => {
    $("nmt-threshold").disabled = !$("nmt-use-threshold").checked; relink();
  });
  $("nmt-threshold").addEventListener("input", () => {
    $("nmt-threshold-value").textContent = Number($("nmt-threshold").value).toFixed(2); relink();
  });
  $("vqa-form").addEventListener("submit", (e) => { e.preventDefault(); ask(); });
  $("vqa-upload").addEventListener("change", chooseUpload);
  show(state.runs.some((r) => r.task === "nmt") ? "nmt" : "vqa");
  for (const task of ["nmt", "vqa"]) if (state.runs.some((r) => r.task === task)) loadExamples(task);
  fillAnswers();
  status("ready");
}

function show(task) {
  for (const t of ["nmt", "vqa"]) {
    $(`view-${t}`).hidden = t !== task;
    $(`tab-${t}`).classList.toggle("active", t === task);
  }
}

async function loadExamples(task) {
  const run = $(`${task}-run-a`).value;
  if (!run) return;
  try {
    const data = await call(`/api/examples?run=${encodeURIComponent(run)}`);
    if (task === "nmt") fillPairs(data.examples); else fillImages(run, data.examples);
  } catch (e) { status(`no examples: ${e.message}`, true); }
}

// -- translation ------------------------------------------------------------------------------------------
function fillPairs(examples) {
  const select = $("nmt-example");
  select.replaceChildren(el("option", { value: "", text: "pick a validation pair" }));
  state.pairs = examples;
  examples.forEach((ex, k) => select.append(el("option", { value: String(k), text: ex.src.slice(0, 60) })));
}

function pickPair() {
  const ex = state.pairs[Number($("nmt-example").value)];
  if (!ex) return;
  $("nmt-src").value = ex.src;
  $("nmt-ref").value = ex.tgt;
}

function selectedRuns(task) {
  const a = $(`${task}-run-a`).value, b = $(`${task}-run-b`).value;
  return b && b !== a ? [a, b] : [a];
}

function linkOptions() {
  const body = { alternatives: Number($("nmt-alternatives").value) || 3 };
  if ($("nmt-use-threshold").checked) body.threshold = Number($("nmt-threshold").value);
  return body;
}

async function translate() {
  const src = $("nmt-src").value.trim(), ref = $("nmt-ref").value.trim();
  if (!src) { status("type a source sentence first", true); return; }
  const button = $("nmt-go");
  button.disabled = true;
  status("translating…");
  try {
    const search = { beam: Number($("nmt-beam").value) || 5, eos_norm: Number($("nmt-eos-norm").value) || 0,
                     ...linkOptions() };
    if ($("nmt-topk").value) search.topk = Number($("nmt-topk").value);
    state.nmt = await Promise.all(selectedRuns("nmt").map(async (run) => {
      const out = await call("/api/translate", { run, src, ...search });
      const column = { run, src, ref, translation: out.translation, hyp: out.alignment, refPair: null };
      if (ref) column.refPair = await call("/api/align", { run, src, tgt: ref, ...linkOptions() });
      return column;
    }));
    renderNmt();
    status("done");
  } catch (e) { status(e.message, true); }
  finally { button.disabled = false; }
}

// Moving the threshold asks the server for the links again (the library extracts them), a moment later.
function relink() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    if (!state.nmt.length) return;
    try {
      await Promise.all(state.nmt.map(async (column) => {
        if (column.hyp) {
          column.hyp = await call("/api/align", { run: column.run, src: column.src,
                                                  tgt_tokens: column.translation.tokens, ...linkOptions() });
        }
        if (column.ref) column.refPair = await call("/api/align", { run: column.run, src: column.src,
                                                                     tgt: column.ref, ...linkOptions() });
      }));
      renderNmt();
    } catch (e) { status(e.message, true); }
  }, 200);
}

function renderNmt() {
  const results = $("nmt-results");
  results.replaceChildren();
  for (const column of state.nmt) {
    const info = runInfo(column.run);
    const box = el("div", { class: "column", "data-run": column.run });
    box.append(el("h2", { text: `${column.run} · ${info.mode}` }));
    const t = column.translation;
    box.append(el("div", { class: "translation", text: t.text || "(empty output)" }));
    box.append(el("div", { class: "figures",
      text: `log p(output | source) = ${t.log_prob.toFixed(3)} · search score ${t.score.toFixed(3)}` }));
    if (column.hyp) box.append(renderPair(column.hyp, info, "alignments of the output", "hyp"));
    if (column.refPair) box.append(renderPair(column.refPair, info, "reference", "ref"));
    results.append(box);
  }
}

// Merged view: a source word's probability is the sum over its pieces (the alignment picks one piece), a target
// word's row is the mean of its pieces' rows.
function mergeMatrix(matrix, srcMap, tgtMap) {
  const nSrc = srcMap.length ? srcMap[srcMap.length - 1] + 1 : 0;
  const nTgt = tgtMap.length ? tgtMap[tgtMap.length - 1] + 1 : 0;
  const out = Array.from({ length: nTgt }, () => new Array(nSrc).fill(0));
  const count = new Array(nTgt).fill(0);
  matrix.forEach((row, t) => {
    count[tgtMap[t]] += 1;
    row.forEach((p, s) => { out[tgtMap[t]][srcMap[s]] += p; });
  });
  return out.map((row, w) => row.map((p) => p / count[w]));
}

const entropy = (row) => row.reduce((h, p) => (p > 0 ? h - p * Math.log(p) : h), 0);

function topK(row, k) {
  return row.map((p, i) => [i, p]).sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, k);
}

function renderPair(pair, info, title, kind) {
  const merged = $("nmt-merge").checked;
  const wrap = el("div", { class: "pair", "data-kind": kind });
  const figures = [`log p(y | x) = ${pair.log_prob.toFixed(3)}`];
  if (pair.elbo !== null) figures.push(`ELBO = ${pair.elbo.toFixed(3)}`);
  figures.push(`${pair.tokens} tokens with </s>`, `perplexity ${Math.exp(-pair.log_prob / pair.tokens).toFixed(3)}`);
  wrap.append(el("h3", { text: title }), el("div", { class: "figures", text: figures.join(" · ") }));
  const srcLabels = merged ? pair.src_words : pair.src_pieces;
  const tgtLabels = merged ? pair.tgt_words : pair.tgt_pieces;
  const srcUnknown = new Set(merged ? [] : pair.src_unknown), tgtUnknown = new Set(merged ? [] : pair.tgt_unknown);
  const k = Number($("nmt-alternatives").value) || 3;
  const panels = el("div", { class: "panels" });
  for (const method of info.methods) {
    const m = pair.methods[method];
    const matrix = merged ? mergeMatrix(m.matrix, pair.src_word_of_piece, pair.tgt_word_of_piece) : m.matrix;
    const linked = new Set();
    if (merged) {
      for (const token of m.links.split(" ").filter(Boolean)) linked.add(token);
    } else {
      for (const [s, t] of m.piece_links) linked.add(`${s}-${t}`);
    }
    const table = el("table", { class: "heatmap", "data-method": method });
    const head = el("tr", {}, el("th"));
    srcLabels.forEach((w, s) => head.append(el("th", { class: `src${srcUnknown.has(s) ? " unknown" : ""}`, text: w })));
    head.append(el("th", { text: "H" }));
    table.append(el("thead", {}, head));
    const tbody = el("tbody");
    matrix.forEach((row, t) => {
      const tr = el("tr", {}, el("th", { class: `tgt${tgtUnknown.has(t) ? " unknown" : ""}`, text: tgtLabels[t] }));
      const h = merged ? entropy(row) : m.entropy[t];
      const alternatives = merged ? topK(row, k) : m.alternatives[t];
      row.forEach((p, s) => {
        const cell = el("td", { class: `cell${linked.has(`${s}-${t}`) ? " link" : ""}`, "data-p": fmt(p),
                                "data-t": String(t), "data-s": String(s), "data-method": method });
        cell.style.background = `rgba(75, 63, 158, ${Math.min(1, Math.max(0, p))})`;
        cell.addEventListener("mouseenter", () => hoverCell(cell, {
          title: m.title, p, src: srcLabels[s], tgt: tgtLabels[t], h,
          alternatives: alternatives.map(([i, q]) => `${srcLabels[i]} ${fmt(q)}`),
        }));
        tr.append(cell);
      });
      tr.append(el("td", { class: "entropy", text: h.toFixed(2) }));
      tbody.append(tr);
    });
    table.append(tbody);
    const panel = el("div", { class: "panel" }, el("div", { text: m.title }), table);
    panel.append(el("div", { class: "links", text: `links (${pair.threshold === null ? "argmax" :
      `p > ${pair.threshold}`}, Pharaoh, words): ${m.links || "(none)"}` }));
    panels.append(panel);
  }
  wrap.append(panels);
  return wrap;
}

function hoverCell(cell, d) {
  document.querySelectorAll("td.cell.hot").forEach((c) => c.classList.remove("hot"));
  const pair = cell.closest(".pair");
  pair.querySelectorAll(`td.cell[data-t="${cell.dataset.t}"][data-s="${cell.dataset.s}"]`)
    .forEach((c) => c.classList.add("hot"));
  const box = $("nmt-hover");
  box.replaceChildren(
    el("strong", { class: "prob", text: fmt(d.p) }),
    ` = ${d.title} for target “${d.tgt}”, source “${d.src}” · row entropy ${d.h.toFixed(3)} nats · best: `,
    el("span", { class: "alternatives", text: d.alternatives.join(", ") }),
  );
  box.dataset.method = cell.dataset.method;
  box.dataset.t = cell.dataset.t;
  box.dataset.s = cell.dataset.s;
}

// -- VQA --------------------------------------------------------------------------------------------------
function fillImages(run, examples) {
  const box = $("vqa-examples");
  box.replaceChildren();
  state.vqaExamples = examples;
  const seen = new Set();
  for (const ex of examples) {
    if (seen.has(ex.image)) continue;
    seen.add(ex.image);
    const img = el("img", { src: `/api/image?run=${encodeURIComponent(run)}&index=${ex.image}`,
                            alt: `test image ${ex.image}`, title: ex.question, "data-index": String(ex.image) });
    img.addEventListener("click", () => chooseExample(ex.image, img.src));
    box.append(img);
  }
  if (!examples.length) box.append(el("span", { class: "hint", text: "no example images for this run: upload one" }));
}

function chooseExample(index, src) {
  state.image = { example: index, url: src };
  document.querySelectorAll("#vqa-examples img").forEach((i) => i.classList.toggle("selected",
    Number(i.dataset.index) === index));
  const list = $("vqa-questions");
  list.replaceChildren();
  const questions = state.vqaExamples.filter((ex) => ex.image === index);
  questions.forEach((ex) => list.append(el("option", { value: ex.question })));
  if (questions.length && !$("vqa-question").value) $("vqa-question").value = questions[0].question;
  showChosen(src);
}

function chooseUpload() {
  const file = $("vqa-upload").files[0];
  if (!file) return;
  if (file.size > state.limits.max_upload_bytes) {
    status(`the image is larger than ${state.limits.max_upload_bytes} bytes`, true);
    return;
  }
  state.image = { file, url: URL.createObjectURL(file) };
  document.querySelectorAll("#vqa-examples img").forEach((i) => i.classList.remove("selected"));
  showChosen(state.image.url);
}

function showChosen(src) {
  const img = $("vqa-chosen");
  img.src = src;
  img.hidden = false;
}

function fillAnswers() {
  const info = runInfo($("vqa-run-a").value);
  const select = $("vqa-answer");
  select.replaceChildren(el("option", { value: "", text: "top answer" }));
  if (info) info.answers.forEach((a) => select.append(el("option", { value: a, text: a })));
}

async function ask() {
  const question = $("vqa-question").value.trim();
  if (!state.image) { status("pick an example image or upload one first", true); return; }
  if (!question) { status("type a question first", true); return; }
  const button = $("vqa-go");
  button.disabled = true;
  status("answering…");
  try {
    const answer = $("vqa-answer").value;
    const image = await loadImage(state.image.url);
    state.vqa = await Promise.all(selectedRuns("vqa").map(async (run) => {
      let out;
      if (state.image.file) {
        const form = new FormData();
        form.append("run", run);
        form.append("question", question);
        if (answer) form.append("answer", answer);
        form.append("image", state.image.file);
        out = await call("/api/answer", form);
      } else {
        out = await call("/api/answer", { run, question, example: state.image.example, answer: answer || null });
      }
      return { run, out, image };
    }));
    renderVqa();
    status("done");
  } catch (e) { status(e.message, true); }
  finally { button.disabled = false; }
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = src;
  });
}

function renderVqa() {
  const results = $("vqa-results");
  results.replaceChildren();
  for (const { run, out, image } of state.vqa) {
    const info = runInfo(run);
    const box = el("div", { class: "column", "data-run": run });
    box.append(el("h2", { text: `${run} · ${info.mode}` }));
    if (out.unknown_words) {
      box.append(el("div", { class: "unknown",
        text: `${out.unknown_words} of the question's ${out.question_words} words are unknown to the model` }));
    }
    const list = el("ul", { class: "answers" });
    for (const { answer, probability } of out.answers.slice(0, 6)) {
      const bar = el("span", { class: "bar" });
      bar.style.width = `${Math.round(probability * 200)}px`;  // CSSOM: the page's policy allows no style attribute
      list.append(el("li", { "data-answer": answer }, el("span", { class: "name", text: answer }), bar,
        el("span", { class: "figures", text: fmt(probability) })));
    }
    box.append(el("h3", { text: "answers" }), list);
    box.append(el("h3", { text: `where it looked, given the answer “${out.regions.answer}”` }));
    const regions = el("div", { class: "regions" });
    for (const method of info.methods) {
      const r = out.regions[method];
      regions.append(el("div", { class: "panel" }, el("div", { text: r.title }),
        drawRegions(image, r, out.regions.grid, method),
        el("div", { class: "figures", text: `entropy ${r.entropy.toFixed(3)} nats` })));
    }
    box.append(regions);
    results.append(box);
  }
}

function drawRegions(image, r, grid, method) {
  const size = 192;
  const canvas = el("canvas", { width: size, height: size, "data-method": method });
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, 0, 0, size, size);
  const [rows, cols] = grid;
  const top = Math.max(...r.probs, 1e-12);
  r.probs.forEach((p, k) => {
    const row = Math.floor(k / cols), col = k % cols;
    ctx.fillStyle = `rgba(0, 0, 0, ${0.75 * (1 - p / top)})`;  // bright where the model looks
    ctx.fillRect((col * size) / cols, (row * size) / rows, size / cols, size / rows);
  });
  canvas.addEventListener("mousemove", (e) => {
    const rect = canvas.getBoundingClientRect();
    const col = Math.min(cols - 1, Math.floor(((e.clientX - rect.left) / rect.width) * cols));
    const row = Math.min(rows - 1, Math.floor(((e.clientY - rect.top) / rect.height) * rows));
    const k = row * cols + col;
    $("vqa-hover").replaceChildren(el("strong", { class: "prob", text: fmt(r.probs[k]) }),
      ` = ${r.title} for region ${k} (row ${row}, column ${col})`);
  });
  return canvas;
}

document.addEventListener("DOMContentLoaded", start);

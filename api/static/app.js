// Qiao web page: plain JS, no build step, no external requests.
// Talks to the API it is served by: POST /ask (or /search), GET /documents/{id}?start=&end=,
// GET/POST/DELETE /documents. All server text is inserted with textContent (never innerHTML).
"use strict";

const I18N = {
  en: {
    tagline: "Cell & gene therapy policy search",
    question: "Question",
    placeholder: "Ask in English or 中文, e.g. Which regions support stem cell clinical research?",
    search: "Search",
    show: "Show",
    what_ask: "Answer + sources",
    what_search: "Passages only",
    mode: "Retrieval",
    mode_hybrid: "Hybrid",
    mode_bm25: "Keywords (BM25)",
    mode_vector: "Semantic (vectors)",
    mode_ask_note: "Answers use hybrid retrieval; the mode applies to passages only.",
    language: "Language",
    lang_en: "English",
    lang_zh: "Chinese",
    region: "Region",
    region_placeholder: "e.g. Tianjin, 海南",
    date_from: "From",
    date_to: "To",
    answer: "Answer",
    sources: "Sources",
    no_answer: "No answer in these documents",
    no_answer_help: "None of the indexed documents states an answer to this question. The nearest passages are listed below.",
    hits: "Ranked passages",
    nearest: "Nearest passages",
    close: "Close",
    manage: "Manage documents",
    files: "Files (.txt, .md, .html, .pdf)",
    api_key: "API key (if the server requires one)",
    upload: "Upload",
    col_title: "Title", col_lang: "Lang", col_date: "Date", col_source: "Source file", col_chunks: "Chunks",
    delete: "Delete",
    toggle: "中文",
    loading: "Searching…",
    loading_doc: "Opening document…",
    empty_query: "Type a question first.",
    no_hits: "No passages match these filters.",
    hits_meta: (n, ms) => `${n} passages in ${ms} ms`,
    open_source: "Open source",
    cite_title: (id, title) => `Source ${id}: ${title}`,
    lines: (a, b) => (a === b ? `line ${a}` : `lines ${a}–${b}`),
    chars: (n) => `${n} characters`,
    score: "score",
    retrieval_rank: (r) => `retrieval rank ${r}`,
    err_network: "Cannot reach the server. Is it running?",
    err_server: (status) => `The server failed (${status}).`,
    ask_missing: "Answers are not available on this server; showing passages only.",
    confirm_delete: (t) => `Delete “${t}” from the index?`,
    uploading: "Uploading and indexing…",
    uploaded: (docs) => `Added ${docs.map((d) => `${d.source} (${d.chunks} chunks)`).join(", ")}.`,
    deleted: (id) => `Deleted ${id}.`,
    pick_files: "Choose one or more files first.",
    health_ok: (d, c, e) => `${d} documents · ${c} passages · ${e}`,
    health_none: "No index loaded",
  },
  zh: {
    tagline: "细胞与基因治疗政策检索",
    question: "问题",
    placeholder: "用中文或英文提问，例如：哪些地区支持干细胞临床研究？",
    search: "搜索",
    show: "显示",
    what_ask: "答案与来源",
    what_search: "仅段落",
    mode: "检索方式",
    mode_hybrid: "混合",
    mode_bm25: "关键词 (BM25)",
    mode_vector: "语义 (向量)",
    mode_ask_note: "答案总是使用混合检索；检索方式仅适用于“仅段落”。",
    language: "语言",
    lang_en: "英文",
    lang_zh: "中文",
    region: "地区",
    region_placeholder: "例如：天津、Hainan",
    date_from: "起始日期",
    date_to: "截止日期",
    answer: "答案",
    sources: "来源",
    no_answer: "这些文档中没有答案",
    no_answer_help: "已索引的文档都没有回答这个问题。下面列出最接近的段落。",
    hits: "相关段落",
    nearest: "最接近的段落",
    close: "关闭",
    manage: "管理文档",
    files: "文件（.txt、.md、.html、.pdf）",
    api_key: "API 密钥（如服务器要求）",
    upload: "上传",
    col_title: "标题", col_lang: "语言", col_date: "日期", col_source: "源文件", col_chunks: "段落数",
    delete: "删除",
    toggle: "English",
    loading: "正在搜索…",
    loading_doc: "正在打开文档…",
    empty_query: "请先输入问题。",
    no_hits: "没有符合筛选条件的段落。",
    hits_meta: (n, ms) => `${n} 个段落，用时 ${ms} 毫秒`,
    open_source: "打开原文",
    cite_title: (id, title) => `来源 ${id}：${title}`,
    lines: (a, b) => (a === b ? `第 ${a} 行` : `第 ${a}–${b} 行`),
    chars: (n) => `${n} 个字符`,
    score: "得分",
    retrieval_rank: (r) => `检索排名 ${r}`,
    err_network: "无法连接服务器，请确认服务已启动。",
    err_server: (status) => `服务器出错（${status}）。`,
    ask_missing: "此服务器不提供答案，仅显示段落。",
    confirm_delete: (t) => `从索引中删除“${t}”？`,
    uploading: "正在上传并建立索引…",
    uploaded: (docs) => `已添加 ${docs.map((d) => `${d.source}（${d.chunks} 个段落）`).join("、")}。`,
    deleted: (id) => `已删除 ${id}。`,
    pick_files: "请先选择文件。",
    health_ok: (d, c, e) => `${d} 个文档 · ${c} 个段落 · ${e}`,
    health_none: "未加载索引",
  },
};

const $ = (sel) => document.querySelector(sel);
const state = { lang: "en", controller: null, lastAsk: null, citations: new Map(), docSeq: 0 };

function t(key, ...args) {
  const v = I18N[state.lang][key] ?? I18N.en[key] ?? key;
  return typeof v === "function" ? v(...args) : v;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// ---------- language --------------------------------------------------------

function applyLang(lang) {
  state.lang = lang in I18N ? lang : "en";
  document.documentElement.lang = state.lang === "zh" ? "zh-Hans" : "en";
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) node.placeholder = t(node.dataset.i18nPlaceholder);
  $("#lang-toggle").textContent = t("toggle");
  updateMode();
  try { localStorage.setItem("qiao.lang", state.lang); } catch (_) { /* private mode */ }
  rerender();
  loadHealth();
}

// ---------- HTTP ------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

function detailMessage(body, status) {
  const d = body && body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d) && d.length) {
    return d.map((e) => {
      const where = (e.loc || []).filter((p) => p !== "body").join(".");
      return where ? `${where}: ${e.msg}` : e.msg;
    }).join("; ");
  }
  return t("err_server", status);
}

async function api(path, options = {}) {
  let res;
  try {
    // X-Qiao-Request: the server refuses writes without it (a page on another site cannot send it)
    res = await fetch(path, { ...options, headers: { "X-Qiao-Request": "1", ...(options.headers || {}) } });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(t("err_network"), 0);
  }
  let body = null;
  const text = await res.text();
  if (text) { try { body = JSON.parse(text); } catch (_) { body = null; } }
  if (!res.ok) throw new ApiError(detailMessage(body, res.status), res.status);
  return body;
}

function postJSON(path, payload, signal) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload), signal });
}

// ---------- UI state helpers ------------------------------------------------

function show(node, on) { node.hidden = !on; }

function setStatus(text) {
  const s = $("#status");
  s.textContent = "";
  if (text) s.append(el("span", { class: "spinner", "aria-hidden": "true" }), " ", text);
  show(s, Boolean(text));
  $("#results").setAttribute("aria-busy", text ? "true" : "false");
}

function setError(text) {
  $("#error").textContent = text || "";
  show($("#error"), Boolean(text));
}

function clearResults() {
  show($("#answer-box"), false);
  show($("#noanswer-box"), false);
  show($("#hits-box"), false);
  $("#answer-text").textContent = "";
  $("#citations").textContent = "";
  $("#hits").textContent = "";
  state.citations = new Map();
}

// ---------- search ----------------------------------------------------------

function readFilters() {
  const f = {};
  const langs = [...document.querySelectorAll('input[name="lang"]:checked')].map((i) => i.value);
  if (langs.length) f.lang = langs;
  const regions = $("#region").value.split(/[,，、;；]/).map((s) => s.trim()).filter(Boolean);
  if (regions.length) f.region = regions;
  if ($("#date-from").value) f.date_from = $("#date-from").value;
  if ($("#date-to").value) f.date_to = $("#date-to").value;
  return f;
}

// Answers always use hybrid retrieval; the retrieval mode applies to "passages only".
function updateMode() {
  const ask = document.querySelector('input[name="what"]:checked').value === "ask";
  $("#mode").disabled = ask;
  $("#mode").title = ask ? t("mode_ask_note") : "";
}

function updateButton() {
  $("#go").disabled = !$("#q").value.trim();
  if ($("#q").value.trim()) show($("#form-hint"), false);
}

async function runSearch(ev) {
  if (ev) ev.preventDefault();
  const query = $("#q").value.trim();
  if (!query) {
    $("#form-hint").textContent = t("empty_query");
    show($("#form-hint"), true);
    $("#q").focus();
    return;
  }
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const what = document.querySelector('input[name="what"]:checked').value;
  const mode = $("#mode").value;
  const filters = readFilters();
  setError("");
  clearResults();
  setStatus(t("loading"));
  $("#go").disabled = true;
  try {
    let result;
    if (what === "ask") {
      try {
        const body = await postJSON("/ask", { question: query, filters }, controller.signal);
        result = { kind: "ask", body };
      } catch (err) {
        if (!(err instanceof ApiError) || (err.status !== 404 && err.status !== 405)) throw err;
        if (err.status === 404 && !/not found/i.test(err.message)) throw err; // a real 404 (e.g. unknown doc_id)
        const body = await postJSON("/search", { query, mode, filters, k: 10 }, controller.signal);
        result = { kind: "search", body, note: t("ask_missing") };
      }
    } else {
      const body = await postJSON("/search", { query, mode, filters, k: 10 }, controller.signal);
      result = { kind: "search", body };
    }
    if (state.controller !== controller) return;
    state.lastAsk = result;
    rerender();
  } catch (err) {
    if (err.name === "AbortError") return;
    state.lastAsk = null;
    setError(err.message || String(err));
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      setStatus("");
      updateButton();
    }
  }
}

function rerender() {
  const r = state.lastAsk;
  if (!r) return;
  clearResults();
  const body = r.body;
  if (r.note) setError(r.note);
  if (r.kind === "ask") {
    if (body.answerable && body.answer) renderAnswer(body);
    else show($("#noanswer-box"), true);
  }
  const nearest = r.kind === "ask" && !body.answerable;
  renderHits(body.hits || [], body.took_ms, nearest);
}

// Markers like [1], [1][2] or [1, 2] referring to citation ids become buttons.
const MARKER_RE = /\[(\d+(?:\s*[,，]\s*\d+)*)\]/g;

function renderAnswer(body) {
  for (const c of body.citations || []) state.citations.set(String(c.id), c);
  const p = $("#answer-text");
  const text = body.answer;
  let last = 0;
  for (const m of text.matchAll(MARKER_RE)) {
    const ids = m[1].split(/\s*[,，]\s*/);
    if (!ids.every((id) => state.citations.has(id))) continue; // not a citation marker: keep as text
    p.append(text.slice(last, m.index));
    for (const id of ids) {
      const c = state.citations.get(id);
      p.append(el("button", {
        type: "button", class: "cite", "data-cite-id": id, title: t("cite_title", id, c.title),
        "aria-label": t("cite_title", id, c.title), onclick: () => openCitation(id), text: `[${id}]`,
      }));
    }
    last = m.index + m[0].length;
  }
  p.append(text.slice(last));

  const list = $("#citations");
  for (const c of body.citations || []) {
    const regions = (c.regions || []).join(", ");
    list.append(el("li", { "data-cite-id": c.id },
      el("button", { type: "button", class: "cite", "data-cite-id": c.id, onclick: () => openCitation(String(c.id)), text: `[${c.id}]` }),
      " ",
      el("a", { href: docHref(c), class: "src-title", onclick: (e) => { e.preventDefault(); openCitation(String(c.id)); }, text: c.title || c.source }),
      el("span", { class: "meta" }, [c.date, regions, c.source].filter(Boolean).join(" · ")),
      c.quote ? el("blockquote", { class: "quote", text: c.quote }) : null,
    ));
  }
  show($("#answer-box"), true);
}

function openCitation(id) {
  const c = state.citations.get(id);
  for (const b of document.querySelectorAll("button.cite")) b.classList.toggle("active", b.dataset.citeId === id);
  openSpan(c, c.quote);
}

function langBadge(lang) {
  return el("span", { class: `badge lang-${lang}`, text: lang === "zh" ? "中文" : lang === "en" ? "EN" : lang });
}

function renderHits(hits, tookMs, nearest) {
  $("#hits-title").textContent = nearest ? t("nearest") : t("hits");
  $("#hits-meta").textContent = hits.length ? t("hits_meta", hits.length, Math.round(tookMs ?? 0)) : t("no_hits");
  const list = $("#hits");
  hits.forEach((h, i) => {
    const regions = (h.regions || []).slice(0, 6).join(", ");
    // position in this list (answers may order their evidence differently from the retriever's rank)
    list.append(el("li", { class: "hit", "data-chunk-id": h.chunk_id },
      el("div", { class: "hit-head" },
        el("span", { class: "rank", title: t("retrieval_rank", h.rank), text: `#${i + 1}` }),
        langBadge(h.lang),
        el("a", { href: docHref(h), class: "src-title", onclick: (e) => { e.preventDefault(); openSpan(h, null); }, text: h.title || h.source }),
        el("span", { class: "score", title: scoreTitle(h), text: `${t("score")} ${Number(h.score).toFixed(4)}` }),
      ),
      el("div", { class: "meta" }, [h.date, h.heading, regions, h.source].filter(Boolean).join(" · ")),
      el("p", { class: "snippet", text: h.text }),
    ));
  });
  show($("#hits-box"), true);
}

function scoreTitle(h) {
  const s = h.scores || {};
  const f = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(4));
  return `bm25 ${f(s.bm25)} · vector ${f(s.vector)}`;
}

function docHref(x) {
  return `/documents/${encodeURIComponent(x.doc_id)}?start=${x.start}&end=${x.end}`;
}

// ---------- document viewer -------------------------------------------------

// Offsets from the API count Unicode code points (Python str); JS strings count UTF-16 units.
function cpToUnit(text, cp) {
  let unit = 0;
  for (let i = 0; i < cp && unit < text.length; i++) {
    const c = text.charCodeAt(unit);
    unit += c >= 0xd800 && c <= 0xdbff && unit + 1 < text.length ? 2 : 1;
  }
  return unit;
}

async function openSpan(x, quote) {
  const seq = ++state.docSeq;
  const viewer = $("#viewer");
  show(viewer, true);
  $("#viewer-title").textContent = x.title || x.source;
  $("#viewer-meta").textContent = t("loading_doc");
  $("#viewer-text").textContent = "";
  viewer.dataset.docId = x.doc_id;
  try {
    const doc = await api(`/documents/${encodeURIComponent(x.doc_id)}?start=${x.start}&end=${x.end}`);
    if (seq !== state.docSeq) return;
    const text = doc.text;
    const a = cpToUnit(text, doc.span.start);
    const b = a + cpToUnit(text.slice(a), doc.span.end - doc.span.start);
    const mark = el("mark", { id: "highlight", "data-start": doc.span.start, "data-end": doc.span.end, text: text.slice(a, b) });
    const box = $("#viewer-text");
    box.append(text.slice(0, a), mark, text.slice(b));
    $("#viewer-title").textContent = doc.title || doc.source;
    $("#viewer-meta").textContent = [doc.date, doc.source, t("lines", doc.span.line_start, doc.span.line_end), t("chars", doc.chars)]
      .filter(Boolean).join(" · ");
    if (quote !== null && quote !== undefined) mark.dataset.quote = quote;
    // centre the span inside the document panel, then make sure the panel itself is on screen
    box.scrollTop = Math.max(0, mark.offsetTop - (box.clientHeight - mark.offsetHeight) / 2);
    const r = viewer.getBoundingClientRect();
    if (r.top < 0 || r.top > window.innerHeight - 80) viewer.scrollIntoView({ block: "start", behavior: "instant" });
    viewer.dataset.ready = "1";
  } catch (err) {
    if (seq !== state.docSeq) return;
    $("#viewer-meta").textContent = "";
    setError(err.message || String(err));
  }
}

// ---------- documents management ---------------------------------------------

// The API key lives only in the password field (page memory): never in sessionStorage/localStorage,
// where any script running on this origin could read it later. It is typed again after a reload.
function authHeaders() {
  const key = $("#api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadDocuments() {
  const rows = $("#doc-rows");
  try {
    const body = await api("/documents");
    rows.textContent = "";
    for (const d of body.documents) {
      rows.append(el("tr", { "data-doc-id": d.doc_id },
        el("td", { text: d.title }), el("td", {}, langBadge(d.lang)), el("td", { text: d.date || "" }),
        el("td", { text: d.source }), el("td", { text: d.chunks }),
        el("td", {}, el("button", { type: "button", class: "link-button danger", onclick: () => deleteDocument(d), text: t("delete") })),
      ));
    }
  } catch (err) {
    $("#manage-status").textContent = err.message;
  }
}

async function deleteDocument(d) {
  if (!window.confirm(t("confirm_delete", d.title || d.source))) return;
  $("#manage-status").textContent = t("uploading");
  try {
    await api(`/documents/${encodeURIComponent(d.doc_id)}`, { method: "DELETE", headers: authHeaders() });
    $("#manage-status").textContent = t("deleted", d.source);
    loadDocuments();
    loadHealth();
  } catch (err) {
    $("#manage-status").textContent = err.message;
  }
}

async function uploadDocuments(ev) {
  ev.preventDefault();
  const files = $("#upload-files").files;
  if (!files.length) { $("#manage-status").textContent = t("pick_files"); return; }
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  $("#manage-status").textContent = t("uploading");
  try {
    const body = await api("/documents", { method: "POST", body: form, headers: authHeaders() });
    $("#manage-status").textContent = t("uploaded", body.documents);
    $("#upload-files").value = "";
    loadDocuments();
    loadHealth();
  } catch (err) {
    $("#manage-status").textContent = err.message;
  }
}

// ---------- health and regions -----------------------------------------------

async function loadHealth() {
  try {
    const h = await api("/health");
    $("#health").textContent = h.index_loaded ? t("health_ok", h.documents, h.chunks, h.embedder) : `${t("health_none")}: ${h.detail || ""}`;
  } catch (_) {
    $("#health").textContent = t("err_network");
  }
}

async function loadRegions() {
  try {
    const body = await api("/regions");
    const list = $("#region-list");
    list.textContent = "";
    for (const r of body.regions) {
      list.append(el("option", { value: r.en, text: `${r.zh_hans} · ${r.en}` }));
      if (r.zh_hans) list.append(el("option", { value: r.zh_hans, text: r.en }));
    }
  } catch (_) { /* the datalist is only a convenience */ }
}

// ---------- wiring -----------------------------------------------------------

function init() {
  let lang = "en";
  try { lang = localStorage.getItem("qiao.lang") || (navigator.language || "").toLowerCase().startsWith("zh") && "zh" || "en"; } catch (_) { /* ignore */ }
  try { sessionStorage.removeItem("qiao.key"); } catch (_) { /* a key stored by an older version of this page */ }
  $("#search-form").addEventListener("submit", runSearch);
  $("#q").addEventListener("input", updateButton);
  // With the button disabled the browser swallows Enter on an empty box: say why.
  $("#q").addEventListener("keydown", (e) => { if (e.key === "Enter" && !$("#q").value.trim()) runSearch(e); });
  $("#lang-toggle").addEventListener("click", () => applyLang(state.lang === "en" ? "zh" : "en"));
  $("#viewer-close").addEventListener("click", () => { state.docSeq++; show($("#viewer"), false); });
  $("#upload-form").addEventListener("submit", uploadDocuments);
  for (const r of document.querySelectorAll('input[name="what"]')) r.addEventListener("change", updateMode);
  $("#manage").addEventListener("toggle", () => { if ($("#manage").open) loadDocuments(); });
  const params = new URLSearchParams(location.search);
  if (params.get("q")) $("#q").value = params.get("q");
  applyLang(lang);
  updateMode();
  updateButton();
  loadRegions();
  document.body.dataset.ready = "1";
  if (params.get("q")) runSearch();
}

document.addEventListener("DOMContentLoaded", init);

// The reviewer console (docs/console.md): the review queue of the gateway, one ad at a time, labelled with the
// keyboard. Plain JS, no build step, nothing loaded from elsewhere. Ad content is only ever set as text
// (textContent), never as HTML: the copy is the advertiser's and may hold markup.
"use strict";

// models/labels.py's violation classes, in order: keys 1-8 (tests/test_console.py checks they match)
const VIOLATIONS = ["none", "exaggeration", "medical_claim", "financial_promise", "gambling", "vulgar",
                    "prohibited_goods", "image_text_mismatch"];
const KEY = "adaudit.apiKey", REVIEWER = "adaudit.reviewer";
const state = {items: [], index: 0, verdict: null, violation: null, busy: false, pictures: new Map()};
const $ = (id) => document.getElementById(id);
const REFUSED = new Error("the key was refused");  // thrown once the login form says so: nothing more to show
const failed = (error) => { if (error !== REFUSED) status(error.message, true); };

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// every API call carries the key; a 401 forgets it and asks again
async function api(path, options = {}) {
  const headers = {...(options.headers || {}), Authorization: "Bearer " + sessionStorage.getItem(KEY)};
  const response = await fetch(path, {...options, headers});
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    showLogin("The key was refused: enter it again.");
    throw REFUSED;
  }
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.kind}: ${body.error}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function showLogin(message) {
  $("login").hidden = false;
  $("console").hidden = true;
  $("forget-key").hidden = true;
  $("reviewer").value = sessionStorage.getItem(REVIEWER) || "";
  $("api-key").focus();
  if (message) status(message, true);
}

async function loadQueue() {
  $("login").hidden = true;
  $("console").hidden = false;
  $("forget-key").hidden = false;
  const items = [];
  let after = null;
  do {  // every open item, page by page (the queue's cursor)
    const query = new URLSearchParams({limit: "200"});
    if (after) query.set("after", after);
    const response = await api("/v1/reviews/queue?" + query);
    if (!response.ok) return status(await errorText(response), true);
    const page = await response.json();
    items.push(...page.items);
    after = page.next;
  } while (after);
  state.items = items;
  state.index = Math.min(state.index, Math.max(items.length - 1, 0));
  render();
  status(items.length ? "" : "The queue is empty.");
}

function renderQueue() {
  const list = $("queue");
  list.replaceChildren(...state.items.map((item, index) => {
    const entry = document.createElement("li");
    entry.textContent = (item.copy || item.ad_id || item.request_id).slice(0, 24);
    entry.dataset.requestId = item.request_id;
    entry.className = index === state.index ? "current" : "";
    entry.addEventListener("click", () => select(index));
    return entry;
  }));
  $("queue-size").textContent = `${state.items.length} waiting`;
}

function render() {
  renderQueue();
  const item = state.items[state.index];
  $("empty").hidden = Boolean(item);
  $("ad").hidden = !item;
  if (!item) return;
  $("ad").dataset.requestId = item.request_id;
  renderCopy(item);
  // an automatic pass or block drawn for audit: the ad is already live or blocked, the reviewer checks it
  $("suggestion").textContent = item.queued === "sample" ? `${item.suggestion} (audit sample)` : item.suggestion;
  $("lean").textContent = item.verdict === "reject" ? `reject (${item.violation})` : "approve";
  $("model").textContent = `${item.model} v${item.version}`;
  $("policy").textContent = item.policy ? `${item.policy.name} v${item.policy.version}` : "-";
  $("reasons").replaceChildren(...item.reasons.map((reason) => {
    const line = document.createElement("li");
    line.textContent = reason.rule + (reason.score == null ? "" : ` (${reason.score.toFixed(3)} ≥ ${reason.threshold})`);
    return line;
  }));
  $("scores").tBodies[0].replaceChildren(...Object.entries(item.scores).map(([task, score]) => {
    const row = document.createElement("tr");
    for (const text of [task, score.toFixed(3)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }));
  showPicture(item).catch(failed);
  choose(null, null);
}

// spans with integer start/end anywhere in the evidence (whatever its shape), as offsets into the copy
function evidenceSpans(evidence, found = []) {
  if (Array.isArray(evidence)) evidence.forEach((part) => evidenceSpans(part, found));
  else if (evidence && typeof evidence === "object") {
    if (Number.isInteger(evidence.start) && Number.isInteger(evidence.end)) found.push({...evidence, list: "evidence"});
    else Object.values(evidence).forEach((part) => evidenceSpans(part, found));
  }
  return found;
}

// the copy with term hits and evidence spans marked; offsets count code points, as Python's do
function renderCopy(item) {
  const characters = Array.from(item.copy || "");
  const classes = characters.map(() => new Set());
  for (const span of [...item.term_hits, ...evidenceSpans(item.evidence)]) {
    for (let at = Math.max(span.start, 0); at < Math.min(span.end, characters.length); at++) classes[at].add(span.list);
  }
  const parts = [];
  for (let at = 0; at < characters.length;) {
    const key = [...classes[at]].sort().join(" ");
    let end = at + 1;
    while (end < characters.length && [...classes[end]].sort().join(" ") === key) end++;
    const text = characters.slice(at, end).join("");
    if (key) {
      const mark = document.createElement("mark");
      mark.className = key;
      mark.textContent = text;
      parts.push(mark);
    } else parts.push(document.createTextNode(text));
    at = end;
  }
  $("copy").replaceChildren(...(item.copy == null ? [document.createTextNode("(copy not kept)")] : parts));
}

// an <img> cannot send the key: the picture is fetched with it and shown from a blob URL
async function showPicture(item) {
  $("picture").hidden = !item.picture_url;
  $("no-picture").hidden = Boolean(item.picture_url);
  $("picture").removeAttribute("src");
  if (!item.picture_url) return;
  if (!state.pictures.has(item.request_id)) {
    const response = await api(item.picture_url);
    if (!response.ok) return status(await errorText(response), true);
    state.pictures.set(item.request_id, URL.createObjectURL(await response.blob()));
  }
  if (state.items[state.index] === item) $("picture").src = state.pictures.get(item.request_id);
}

// a violation other than none means reject; approve means none
function choose(verdict, violation) {
  state.verdict = verdict;
  state.violation = violation;
  document.querySelectorAll("[data-verdict]").forEach((b) => b.classList.toggle("chosen", b.dataset.verdict === verdict));
  document.querySelectorAll("[data-violation]").forEach((b) => b.classList.toggle("chosen", b.dataset.violation === violation));
}

function select(index) {
  if (!state.items.length) return;
  state.index = Math.max(0, Math.min(index, state.items.length - 1));
  render();
}

async function submit() {
  const item = state.items[state.index];
  if (!item || state.busy) return;
  if (!state.verdict) return status("Pick a verdict first: a (approve), r (reject) or a violation 1-8.", true);
  const labels = {verdict: state.verdict, violation: state.violation || (state.verdict === "approve" ? "none" : item.violation)};
  if (labels.verdict === "reject" && labels.violation === "none") return status("Reject needs a violation (2-8).", true);
  const body = {labels};
  if (sessionStorage.getItem(REVIEWER)) body.reviewer = sessionStorage.getItem(REVIEWER);
  state.busy = true;
  try {
    const response = await api(`/v1/audits/${encodeURIComponent(item.request_id)}/feedback`,
      {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    if (!response.ok && response.status !== 409) return status(await errorText(response), true);
    // stored, or another reviewer was first (409): either way it has left the queue
    state.items.splice(state.items.indexOf(item), 1);
    URL.revokeObjectURL(state.pictures.get(item.request_id) || "");
    state.pictures.delete(item.request_id);
    status(response.ok ? `Reviewed ${item.request_id}: ${labels.verdict} / ${labels.violation}`
                       : `${item.request_id} was already reviewed by someone else`);
    select(state.index);
    if (!state.items.length) render();
  } finally {
    state.busy = false;
  }
}

function onKey(event) {
  if ($("console").hidden || event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey || event.altKey) return;
  const number = Number(event.key);
  if (event.key === "j") select(state.index + 1);
  else if (event.key === "k") select(state.index - 1);
  else if (event.key === "a") choose("approve", "none");
  else if (event.key === "r") choose("reject", state.violation && state.violation !== "none" ? state.violation : null);
  else if (number >= 1 && number <= VIOLATIONS.length) choose(number === 1 ? "approve" : "reject", VIOLATIONS[number - 1]);
  else if (event.key === "Enter") submit().catch(failed);
  else return;
  event.preventDefault();
}

function start() {
  $("violations").replaceChildren(...VIOLATIONS.map((violation, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.violation = violation;
    button.innerHTML = `<kbd>${index + 1}</kbd> `;  // constant markup; the label below is text
    button.append(violation);
    button.addEventListener("click", () => choose(index ? "reject" : "approve", violation));
    return button;
  }));
  document.querySelectorAll("[data-verdict]").forEach((b) => b.addEventListener("click",
    () => choose(b.dataset.verdict, b.dataset.verdict === "approve" ? "none" : null)));
  $("submit").addEventListener("click", () => submit().catch(failed));
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    sessionStorage.setItem(REVIEWER, $("reviewer").value.trim());
    $("api-key").value = "";
    loadQueue().catch(failed);
  });
  $("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(); });
  document.addEventListener("keydown", onKey);
  if (sessionStorage.getItem(KEY)) loadQueue().catch(failed);
  else showLogin();
}

start();

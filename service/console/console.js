// The reviewer console (docs/console.md): the review queue of the gateway, one ad at a time, labelled with the
// keyboard. Plain JS, no build step, nothing loaded from elsewhere. Ad content is only ever set as text
// (textContent), never as HTML: the copy is the advertiser's and may hold markup.
"use strict";

// No class name is written here: the labels are the served model's, read from GET /v1/taxonomy at start (its tasks,
// classes and their roles, models/labels.py), so a data set's own labels.yaml reaches the reviewer unchanged.
const KEY = "adaudit.apiKey", REVIEWER = "adaudit.reviewer";
const DIGITS = 9;  // keys 1-9: the reason task's first nine classes (more have buttons only)
const state = {items: [], index: 0, verdict: null, violation: null, busy: false, pictures: new Map(), taxonomy: null};
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

// the primary model's taxonomy: the labels feedback takes, and so the console's buttons and keys
async function loadTaxonomy() {
  const response = await api("/v1/taxonomy");
  if (!response.ok) throw new Error(await errorText(response));
  state.taxonomy = await response.json();
  buildLabels();
}

// the reason task's classes, in the model's order (digit keys follow it)
const reasonClasses = () => state.taxonomy.tasks[state.taxonomy.reason_task];
const keyedClasses = () => Math.min(reasonClasses().length, DIGITS);  // how many have a digit key
const rejects = (verdict) => state.taxonomy.reject_classes.includes(verdict);

function labelButton(role, name, key, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.dataset[role] = name;
  if (key) button.innerHTML = `<kbd>${key}</kbd> `;  // constant markup; the class name below is text
  button.append(name);
  button.addEventListener("click", onClick);
  return button;
}

function buildLabels() {
  const {tasks, verdict_task, approve_class, reject_class, reason_task} = state.taxonomy;
  const letter = (verdict) => verdict === approve_class ? "a" : verdict === reject_class ? "r" : "";
  $("verdicts").replaceChildren(...tasks[verdict_task].map((verdict) =>
    labelButton("verdict", verdict, letter(verdict), () => chooseVerdict(verdict))));
  $("violations").replaceChildren(...reasonClasses().map((violation, index) =>
    labelButton("violation", violation, index < DIGITS ? String(index + 1) : "", () => chooseViolation(violation))));
  $("approve-name").textContent = approve_class;
  $("reject-name").textContent = reject_class;
  $("last-digit").textContent = String(keyedClasses());
  $("reason-name").textContent = reason_task;
}

async function openQueue() {
  await loadTaxonomy();
  await loadQueue();
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
  $("lean").textContent = rejects(item.verdict) ? `${item.verdict} (${item.violation})` : item.verdict;
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

// the verdict and violation chosen so far (null: not chosen yet); the buttons show them
function choose(verdict, violation) {
  state.verdict = verdict;
  state.violation = violation;
  document.querySelectorAll("[data-verdict]").forEach((b) => b.classList.toggle("chosen", b.dataset.verdict === verdict));
  document.querySelectorAll("[data-violation]").forEach((b) => b.classList.toggle("chosen", b.dataset.violation === violation));
}

// an approving verdict means the clean class; a rejecting one keeps a violation already picked
function chooseVerdict(verdict) {
  const {clean_class} = state.taxonomy;
  const kept = state.violation && state.violation !== clean_class ? state.violation : null;
  choose(verdict, rejects(verdict) ? kept : clean_class);
}

// the clean class approves, any other class rejects; a verdict already chosen that agrees is kept
function chooseViolation(violation) {
  const {clean_class, approve_class, reject_class} = state.taxonomy;
  const rejecting = violation !== clean_class;
  const agrees = state.verdict && rejects(state.verdict) === rejecting;
  choose(agrees ? state.verdict : rejecting ? reject_class : approve_class, violation);
}

function select(index) {
  if (!state.items.length) return;
  state.index = Math.max(0, Math.min(index, state.items.length - 1));
  render();
}

async function submit() {
  const item = state.items[state.index];
  if (!item || state.busy) return;
  const {verdict_task, reason_task, approve_class, reject_class, clean_class} = state.taxonomy;
  if (!state.verdict) {
    return status(`Pick a verdict first: a (${approve_class}), r (${reject_class}) or a ${reason_task} ` +
                  `1-${keyedClasses()}.`, true);
  }
  // a rejecting verdict with no violation picked takes the model's; the reviewer is told when that is the clean class
  const violation = state.violation || (rejects(state.verdict) ? item.violation : clean_class);
  if (rejects(state.verdict) === (violation === clean_class)) {
    return status(`${state.verdict} needs a ${reason_task} other than ${clean_class}.`, true);
  }
  const labels = {[verdict_task]: state.verdict, [reason_task]: violation};
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
    status(response.ok ? `Reviewed ${item.request_id}: ${state.verdict} / ${violation}`
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
  else if (event.key === "a") chooseVerdict(state.taxonomy.approve_class);
  else if (event.key === "r") chooseVerdict(state.taxonomy.reject_class);
  else if (number >= 1 && number <= keyedClasses()) chooseViolation(reasonClasses()[number - 1]);
  else if (event.key === "Enter") submit().catch(failed);
  else return;
  event.preventDefault();
}

function start() {
  $("submit").addEventListener("click", () => submit().catch(failed));
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    sessionStorage.setItem(REVIEWER, $("reviewer").value.trim());
    $("api-key").value = "";
    openQueue().catch(failed);
  });
  $("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(); });
  document.addEventListener("keydown", onKey);
  if (sessionStorage.getItem(KEY)) openQueue().catch(failed);
  else showLogin();
}

start();

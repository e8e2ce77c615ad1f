// DMHA web chat: plain JavaScript, no build step. It chats through the gateway's
// OpenAI-compatible API (/v1/chat/completions, streamed) and reads sessions, jobs and
// models through /dmha/v1 and /v1/models. Every text from the server is put on the
// page with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "dmha.token";
const SESSION_KEY = "dmha.session";
const REPLY_KEY = "dmha.reply."; // + assistant turn id: a reply's details, kept for this tab
const MODEL = "dmha";

const state = {
  token: "",
  claims: null,
  session: "",
  busy: null, // AbortController of the reply being streamed
  selected: null, // <li> of the reply shown in the details panel
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function setStatus(text) {
  $("status").textContent = text;
}

// ---------------------------------------------------------------- HTTP

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return new ApiError(response.status, body.error.message);
  } catch (_) {
    // not JSON: fall through to the status line
  }
  return new ApiError(response.status, `${response.status} ${response.statusText}`);
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.token}`, ...(options.headers || {}) };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    ...options,
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) logout(`Your token was refused: ${error.message}`);
    throw error;
  }
  return response;
}

// Server-sent events over fetch (EventSource cannot send a bearer token).
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data: "))
        .map((line) => line.slice(6))
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const parsed = JSON.parse(data);
      if (parsed.error) throw new ApiError(0, parsed.error.message);
      onData(parsed);
    }
  }
}

// ---------------------------------------------------------------- login

function decodeClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(json);
  } catch (_) {
    return null;
  }
}

function isTrainer() {
  const roles = (state.claims && state.claims.roles) || [];
  return roles.includes("trainer") || roles.includes("admin");
}

async function login(token) {
  const claims = decodeClaims(token);
  if (!claims) {
    $("login-error").textContent = "That is not a DMHA token (expected three dot-separated parts, as `dmha token` prints).";
    return;
  }
  state.token = token;
  state.claims = claims;
  try {
    await refreshModel();
  } catch (error) {
    state.token = "";
    $("login-error").textContent = error.message;
    return;
  }
  localStorage.setItem(TOKEN_KEY, token);
  $("login-error").textContent = "";
  $("token-input").value = "";
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  for (const id of ["logout", "whoami", "toggle-sessions", "toggle-details"]) $(id).hidden = false;
  const roles = (claims.roles || []).join(", ");
  $("whoami").textContent = `${claims.sub}${roles ? ` (${roles})` : ""}`;
  const saved = localStorage.getItem(SESSION_KEY) || "";
  try {
    await loadSessions();
    if (saved) await openSession(saved);
  } catch (error) {
    setStatus(`Error: ${error.message}`);
  }
  $("composer-input").focus();
}

function logout(message = "") {
  if (state.busy) state.busy.abort();
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(SESSION_KEY);
  state.token = "";
  state.claims = null;
  state.session = "";
  $("messages").replaceChildren();
  $("session-list").replaceChildren();
  showDetails(null);
  $("chat-view").hidden = true;
  $("login-view").hidden = false;
  for (const id of ["logout", "whoami", "toggle-sessions", "toggle-details"]) $(id).hidden = true;
  $("login-error").textContent = message;
  $("token-input").focus();
}

// ---------------------------------------------------------------- model version

async function refreshModel() {
  const response = await api("/v1/models");
  const body = await response.json();
  const live = body.data.find((m) => m.id === MODEL);
  $("model-version").textContent = `model: ${live ? live.dmha.version : "?"}`;
}

// ---------------------------------------------------------------- sessions

async function loadSessions() {
  const response = await api("/dmha/v1/sessions");
  const { sessions } = await response.json();
  const list = $("session-list");
  list.replaceChildren();
  if (!sessions.length) list.append(el("li", { class: "meta" }, "No sessions yet."));
  for (const s of sessions) {
    const when = new Date(s.last_active * 1000).toLocaleString();
    const button = el(
      "button",
      { type: "button", class: "session", "data-session": s.session_id, onclick: () => openSession(s.session_id) },
      el("span", { class: "session-id" }, s.session_id.slice(0, 8)),
      el("span", { class: "meta" }, ` ${s.turn_count} turns · ${when}`),
    );
    if (s.session_id === state.session) button.setAttribute("aria-current", "true");
    list.append(el("li", {}, button));
  }
}

function markCurrentSession() {
  for (const button of document.querySelectorAll("#session-list button.session")) {
    if (button.dataset.session === state.session) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

async function openSession(id) {
  let session;
  try {
    session = await (await api(`/dmha/v1/sessions/${encodeURIComponent(id)}`)).json();
  } catch (error) {
    if (error.status === 404) {
      localStorage.removeItem(SESSION_KEY);
      setStatus("That session no longer exists.");
      return;
    }
    throw error;
  }
  state.session = id;
  localStorage.setItem(SESSION_KEY, id);
  const list = $("messages");
  list.replaceChildren();
  showDetails(null);
  let question = "";
  for (const warning of session.warnings) list.append(el("li", { class: "meta" }, warning));
  for (const turn of session.turns) {
    if (turn.role === "user") {
      question = turn.text;
      list.append(userMessage(turn.text));
    } else {
      const stored = sessionStorage.getItem(REPLY_KEY + turn.turn_id);
      list.append(assistantMessage(turn.text, question, stored ? JSON.parse(stored) : null));
    }
  }
  markCurrentSession();
  closePanels();
  setStatus(`Session ${id.slice(0, 8)}: ${session.turns.length} turns.`);
  list.lastElementChild?.scrollIntoView({ block: "end" });
}

function newSession() {
  state.session = "";
  localStorage.removeItem(SESSION_KEY);
  $("messages").replaceChildren();
  showDetails(null);
  markCurrentSession();
  closePanels();
  setStatus("New chat: your first message starts a session.");
  $("composer-input").focus();
}

// ---------------------------------------------------------------- messages

function userMessage(text) {
  return el("li", { class: "msg user" }, el("div", { class: "who" }, "You"), el("div", { class: "text" }, text));
}

function assistantMessage(text, question, details) {
  const li = el("li", { class: "msg assistant" });
  li.dataset.question = question;
  const body = el("div", { class: "text" }, text);
  const actions = el("div", { class: "actions" });
  const detailsButton = el("button", { type: "button", class: "link", "aria-pressed": "false" }, "Details");
  detailsButton.addEventListener("click", () => showDetails(li));
  actions.append(detailsButton);
  if (isTrainer()) {
    const correct = el("button", { type: "button", class: "link" }, "Correct this answer");
    correct.addEventListener("click", () => openCorrection(li));
    actions.append(correct);
  }
  li.append(el("div", { class: "who" }, "DMHA"), body, actions);
  setDetails(li, details);
  return li;
}

function setDetails(li, details) {
  li.details = details;
  const button = li.querySelector(".actions button");
  button.disabled = !details;
  button.title = details ? "" : "Details are kept only for replies received in this tab";
}

async function send(text) {
  const list = $("messages");
  list.append(userMessage(text));
  const li = assistantMessage("", text, null);
  li.setAttribute("aria-busy", "true");
  list.append(li);
  li.scrollIntoView({ block: "end" });
  const body = li.querySelector(".text");
  const controller = new AbortController();
  state.busy = controller;
  $("send").hidden = true;
  $("stop").hidden = false;
  setStatus("DMHA is replying…");
  const headers = state.session ? { "X-DMHA-Session": state.session } : {};
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers,
      signal: controller.signal,
      body: {
        model: MODEL,
        stream: true,
        stream_options: { include_usage: true },
        messages: [{ role: "user", content: text }],
      },
    });
    const session = response.headers.get("X-DMHA-Session");
    let usage = null;
    await readEvents(response, (chunk) => {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices[0];
      if (choice && choice.delta.content) {
        body.textContent += choice.delta.content;
      }
      if (chunk.dmha) {
        if (chunk.dmha.corrected) body.textContent = chunk.dmha.text;
        sessionStorage.setItem(REPLY_KEY + chunk.dmha.assistant_turn_id, JSON.stringify(chunk.dmha));
        setDetails(li, chunk.dmha);
        $("model-version").textContent = `model: ${chunk.dmha.model_version}`;
      }
    });
    if (li.details) showDetails(li);
    state.session = session || state.session;
    localStorage.setItem(SESSION_KEY, state.session);
    setStatus(usage ? `Reply done: ${usage.completion_tokens} tokens.` : "Reply done.");
    await loadSessions();
  } catch (error) {
    if (error.name === "AbortError") {
      setStatus("Stopped.");
      body.append(el("span", { class: "meta" }, " (stopped)"));
    } else {
      body.append(el("span", { class: "error" }, `Error: ${error.message}`));
      setStatus(`Error: ${error.message}`);
    }
  } finally {
    li.removeAttribute("aria-busy");
    state.busy = null;
    $("send").hidden = false;
    $("stop").hidden = true;
  }
}

// ---------------------------------------------------------------- details panel

function card(...children) {
  return el("li", { class: "card" }, ...children);
}

function fill(listId, items, render, empty) {
  const list = $(listId);
  list.replaceChildren();
  if (!items.length) list.append(el("li", { class: "meta" }, empty));
  for (const item of items) list.append(render(item));
}

function showDetails(li) {
  if (state.selected) state.selected.querySelector(".actions button").setAttribute("aria-pressed", "false");
  state.selected = li && li.details ? li : null;
  const d = state.selected ? li.details : null;
  $("details-empty").hidden = !!d;
  $("details-body").hidden = !d;
  if (!d) return;
  li.querySelector(".actions button").setAttribute("aria-pressed", "true");
  fill(
    "d-memories",
    d.memories,
    (m) =>
      card(
        el("div", { class: "row" }, el("span", { class: "tag" }, m.kind), el("span", { class: "score" }, `score ${m.score.toFixed(3)}`)),
        el("div", {}, m.text),
        el("div", { class: "why" }, `Why: ${m.why}`),
      ),
    "No memories were retrieved for this reply.",
  );
  fill(
    "d-statements",
    d.statements,
    (s) =>
      card(
        el("div", { class: "row" }, el("code", {}, s.statement), el("span", { class: `tag ${s.status}` }, s.status)),
        s.reason ? el("div", { class: "why" }, s.reason) : null,
        s.conflicts_with.length ? el("div", { class: "why" }, `Conflicts with: ${s.conflicts_with.join("; ")}`) : null,
      ),
    "No statements (fact:, deny:, rule:) in this message.",
  );
  fill(
    "d-claims",
    d.claims,
    (c) =>
      card(
        el("div", { class: "row" }, el("code", {}, c.claim), el("span", { class: `tag ${c.verdict.toLowerCase()}` }, c.verdict)),
        c.support.length ? el("div", { class: "why" }, `Support: ${c.support.join("; ")}`) : null,
      ),
    "No claims checked against the knowledge base.",
  );
  fill(
    "d-events",
    d.monitor_events,
    (e) =>
      card(
        el("div", { class: "row" }, el("span", {}, `score ${e.score.toFixed(3)}`), el("span", { class: "tag" }, e.outcome)),
        el("div", { class: "why" }, `Signals: ${Object.entries(e.signals).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ")}`),
        e.actions.length ? el("div", { class: "why" }, `Actions: ${e.actions.join(", ")}`) : null,
      ),
    "The consistency monitor did not fire.",
  );
  const notes = [...(d.notice ? [d.notice] : []), ...d.warnings];
  fill("d-notes", notes, (n) => card(n), "None.");
  $("d-meta").textContent = `model ${d.model_version} · finish ${d.finish_reason} · request ${d.request_id}`;
  if (window.matchMedia("(max-width: 900px)").matches) togglePanel("details", true);
}

// ---------------------------------------------------------------- corrections (trainers)

let correcting = null;

function openCorrection(li) {
  correcting = li;
  $("correct-question").textContent = li.dataset.question;
  $("correct-target").value = li.querySelector(".text").textContent;
  $("job").hidden = true;
  $("correct-submit").disabled = false;
  $("correct-dialog").showModal();
  $("correct-target").focus();
}

const FINAL = new Set(["deployed", "rejected", "failed", "candidate"]);

function showJob(job) {
  const total = job.total_steps || 0;
  const progress = $("job-progress");
  if (total > 0) {
    progress.max = total;
    progress.value = Math.min(job.step || 0, total);
  } else if (FINAL.has(job.state)) {
    progress.max = 1;
    progress.value = 1;
  } else {
    progress.removeAttribute("value"); // indeterminate while queued
  }
  let text = `${job.state}`;
  if (total) text += ` · step ${job.step}/${total}`;
  if (job.loss) text += ` · loss ${job.loss.toFixed(3)}`;
  if (job.state === "deployed") text = `Deployed: version ${job.version} is live.`;
  if (job.state === "candidate") text = "Stored as a candidate for a trainer to review.";
  if ((job.state === "rejected" || job.state === "failed") && job.message) text += `: ${job.message}`;
  $("job-state").textContent = text;
}

async function submitCorrection(event) {
  event.preventDefault();
  const target = $("correct-target").value.trim();
  if (!target || !correcting) return;
  $("correct-submit").disabled = true;
  $("job").hidden = false;
  $("job-state").textContent = "Submitting…";
  try {
    const response = await api("/dmha/v1/feedback", {
      method: "POST",
      body: { input_text: correcting.dataset.question, target_text: target },
    });
    const job = await response.json();
    showJob({ state: job.status, step: 0, total_steps: 0 });
    if (FINAL.has(job.status)) return;
    const watch = await api(`/dmha/v1/jobs/${encodeURIComponent(job.job_id)}/watch`);
    await readEvents(watch, showJob);
    await refreshModel();
  } catch (error) {
    $("job-state").textContent = `Error: ${error.message}`;
    $("correct-submit").disabled = false;
  }
}

// ---------------------------------------------------------------- narrow screens

function togglePanel(id, open) {
  const panel = $(id);
  const button = $(id === "sessions" ? "toggle-sessions" : "toggle-details");
  const show = open === undefined ? !panel.classList.contains("open") : open;
  panel.classList.toggle("open", show);
  button.setAttribute("aria-expanded", String(show));
}

function closePanels() {
  togglePanel("sessions", false);
  togglePanel("details", false);
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    login($("token-input").value.trim());
  });
  $("logout").addEventListener("click", () => logout());
  $("new-session").addEventListener("click", newSession);
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("composer-input");
    const text = input.value.trim();
    if (!text || state.busy) return;
    input.value = "";
    send(text);
  });
  $("composer-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.busy && state.busy.abort());
  for (const button of document.querySelectorAll(".close-panel")) {
    button.addEventListener("click", () => {
      togglePanel(button.dataset.panel, false);
      $(button.dataset.panel === "sessions" ? "toggle-sessions" : "toggle-details").focus();
    });
  }
  // On a narrow screen the side panels slide in below the header, whose height wraps.
  const header = document.querySelector(".top");
  const placePanels = () => document.documentElement.style.setProperty("--header-height", `${header.offsetHeight}px`);
  new ResizeObserver(placePanels).observe(header);
  $("toggle-sessions").addEventListener("click", () => togglePanel("sessions"));
  $("toggle-details").addEventListener("click", () => togglePanel("details"));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closePanels();
  });
  $("correct-form").addEventListener("submit", submitCorrection);
  $("correct-close").addEventListener("click", () => $("correct-dialog").close());
  setInterval(() => state.token && refreshModel().catch(() => {}), 30000);

  // A link such as http://host:8080/#token=<jwt> logs in directly; the fragment
  // never reaches a server, and is removed from the address bar at once.
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromLink = fragment.get("token");
  if (fromLink) history.replaceState(null, "", location.pathname);
  const token = fromLink || localStorage.getItem(TOKEN_KEY);
  if (token) login(token);
  else $("token-input").focus();
}

wire();

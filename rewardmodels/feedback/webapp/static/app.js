// The labelling page: fetch a pair, show it, send the person's choice, repeat. No framework, no build step.
// Label convention (server side): left = 1.0 (first item preferred), right = 0.0, equal = 0.5, skip = NaN.
"use strict";

const NAME_KEY = "rlhf-gym.labeller";
const NAME_RE = /^[\p{L}\p{N}_ .@+\-]{1,64}$/u;  // the server checks again; this only gives early feedback
const KEYS = { "1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right",
               "0": "equal", "e": "equal", "E": "equal", "s": "skip", "S": "skip" };
const UNDO_KEYS = new Set(["u", "U"]);
const VIDEO = /\.(mp4|webm)$/i;

let labeller = null;
let invited = false;  // true: the server knows who this is (invitation link); the name cannot be changed
let pair = null;
let busy = false;
let pollTimer = null;
let canUndo = false;

const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setState(state) {  // "idle" | "loading" | "ready" | "saving" | "empty": tests wait on this
  document.body.dataset.state = state;
  for (const b of document.querySelectorAll(".choice")) b.disabled = state !== "ready";
  $("btn-undo").disabled = !canUndo || !(state === "ready" || state === "empty");
}

function showProgress(p) {
  if (!p) return;
  $("labelled").textContent = p.labelled;
  $("queued").textContent = p.queued;
}

function showNotes(notes) {  // the run's task description and how it goes (text only: textContent, never HTML)
  if (!notes) return;
  for (const [key, id] of [["instructions", "instructions-text"], ["status", "run-status"]]) {
    const text = notes[key] || "";
    $(id).textContent = text;
    (key === "instructions" ? $("instructions") : $(id)).hidden = !text;
  }
}

function mediaElement(url) {
  let el;
  if (VIDEO.test(url)) {
    el = document.createElement("video");
    Object.assign(el, { autoplay: true, loop: true, muted: true, playsInline: true, controls: true });
  } else {
    el = document.createElement("img");
    el.alt = "segment clip";
  }
  el.src = url;
  return el;
}

function textElement(text) {
  const el = document.createElement("div");
  el.className = "text";
  el.textContent = text;  // never innerHTML: completions are untrusted text
  return el;
}

function conversationElement(turns) {  // a conversation with an environment, turn by turn
  const el = document.createElement("div");
  el.className = "conversation";
  for (const turn of turns) {
    const row = document.createElement("div");
    row.className = `turn ${turn.role === "user" ? "user" : "assistant"}`;
    const who = document.createElement("span");
    who.className = "role";
    who.textContent = turn.role === "user" ? "environment" : "model";
    const what = document.createElement("span");
    what.className = "content";
    what.textContent = turn.content;  // never innerHTML: untrusted text
    row.append(who, what);
    el.append(row);
  }
  return el;
}

function render(p) {
  pair = p;
  const section = $("pair");
  section.dataset.pairId = p.pair_id;
  section.dataset.kind = p.kind;
  $("media-a").replaceChildren();
  $("media-b").replaceChildren();
  $("side-b").hidden = false;
  $("prompt").hidden = p.kind !== "text";
  if (p.kind === "text") {
    $("prompt").textContent = p.prompt;
    if (p.turns_a && p.turns_b) {  // skip the shared first turn: the prompt above shows it
      $("prompt").textContent = p.turns_a.length ? p.turns_a[0].content : p.prompt;
      $("media-a").append(conversationElement(p.turns_a.slice(1)));
      $("media-b").append(conversationElement(p.turns_b.slice(1)));
    } else {
      $("media-a").append(textElement(p.response_a));
      $("media-b").append(textElement(p.response_b));
    }
  } else if (p.clip) {  // one side-by-side clip: left half is "a", right half is "b"
    $("media-a").append(mediaElement(p.clip));
    $("side-b").hidden = true;
  } else {
    $("media-a").append(mediaElement(p.clip_a));
    $("media-b").append(mediaElement(p.clip_b));
  }
  section.hidden = false;
  setState("ready");
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  let body = null;
  try { body = await response.json(); } catch (e) { body = { error: response.statusText }; }
  if (response.status === 401 || response.status === 403) {
    throw new Error((body && body.error) || "access denied: open the link with ?token=... once");
  }
  return { status: response.status, body };
}

async function fetchNext() {
  clearTimeout(pollTimer);
  if (!labeller) return;
  setState("loading");
  try {
    const { status, body } = await api("/api/next?labeller=" + encodeURIComponent(labeller));
    if (status !== 200) throw new Error(body.error || "could not load the next pair");
    showProgress(body.progress);
    showNotes(body.notes);
    if (body.pair) {
      setStatus("Which one is better?");
      render(body.pair);
    } else {
      pair = null;
      $("pair").hidden = true;
      $("pair").dataset.pairId = "";
      setStatus("No pairs are waiting. Checking again every 2 seconds...");
      setState("empty");
      pollTimer = setTimeout(fetchNext, 2000);
    }
  } catch (err) {
    setStatus(String(err.message || err), true);
    setState("idle");
    pollTimer = setTimeout(fetchNext, 5000);
  }
}

async function choose(choice) {
  if (busy || !pair || document.body.dataset.state !== "ready") return;
  busy = true;
  setState("saving");
  const id = pair.pair_id;
  try {
    const { status, body } = await api("/api/label", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pair_id: id, label: choice, labeller }),
    });
    if (status === 200) {
      showProgress(body.progress);
      setStatus("Saved (" + choice + ").");
      canUndo = true;
      await fetchNext();
    } else if (status === 409 || status === 404) {
      setStatus(body.error + " - showing the next pair.", true);
      await fetchNext();
    } else {
      setStatus(body.error || "the label was not saved", true);
      setState("ready");
    }
  } catch (err) {
    setStatus("Not saved (" + (err.message || err) + "); try again.", true);
    setState("ready");
  } finally {
    busy = false;
  }
}

async function undo() {
  if (busy || !canUndo || !labeller) return;
  busy = true;
  setState("saving");
  try {
    const { status, body } = await api("/api/undo", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ labeller }),
    });
    canUndo = false;  // one step back; the pair comes back to be labelled again
    setStatus(status === 200 ? "Undone: label this pair again." : (body.error || "nothing to undo"), status !== 200);
  } catch (err) {
    setStatus("Not undone (" + (err.message || err) + ").", true);
  } finally {
    busy = false;
  }
  const message = $("status").textContent, isError = $("status").classList.contains("error");
  await fetchNext();
  setStatus(message, isError);
}

function start(name) {
  if (!NAME_RE.test(name) || name !== name.trim()) {
    setStatus("Names are 1-64 letters, digits, spaces or _ . @ + -", true);
    return;
  }
  labeller = name;
  if (!invited) localStorage.setItem(NAME_KEY, name);
  fetchNext();
}

async function whoAmI() {  // an invitation fixes the name; without one, only a local server lets people type it
  try {
    const { status, body } = await api("/api/me");
    if (status !== 200) throw new Error(body.error || "could not reach the server");
    if (body.name) {
      invited = true;
      $("labeller").value = body.name;
      $("labeller").readOnly = true;
      $("save-name").hidden = true;
      start(body.name);
      return;
    }
    if (!body.self_declared) {
      $("who").hidden = true;
      setStatus("Open your personal invitation link to label here.", true);
      return;
    }
  } catch (err) {
    setStatus(String(err.message || err), true);
    return;
  }
  const saved = localStorage.getItem(NAME_KEY);
  if (saved) { $("labeller").value = saved; start(saved); }
}

document.addEventListener("DOMContentLoaded", () => {
  setState("idle");
  $("who").addEventListener("submit", (ev) => { ev.preventDefault(); start($("labeller").value.trim()); });
  for (const b of document.querySelectorAll(".choice")) {
    b.addEventListener("click", () => choose(b.dataset.choice));
  }
  $("btn-undo").addEventListener("click", undo);
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.target.closest("input, textarea")) return;
    if (UNDO_KEYS.has(ev.key)) { ev.preventDefault(); undo(); return; }
    const choice = KEYS[ev.key];
    if (choice) { ev.preventDefault(); choose(choice); }
  });
  whoAmI();
});

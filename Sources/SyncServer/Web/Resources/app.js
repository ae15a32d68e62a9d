// The web remote: a device of kind "web" that shows and controls the user's playback.
// Plain JavaScript, no build step. It speaks protocol/PROTOCOL.md over /v1/connect and, while it
// holds the lease, plays in simulated time like device-sim: it reports its position every five
// seconds and says when a track ended.
"use strict";

const $ = (id) => document.getElementById(id);
const REPORT_MS = 5000;
const REPEAT_NEXT = { off: "context", context: "track", track: "off" };

const app = {
  token: null,
  device: { id: null, name: "Web remote", kind: "web" },
  ws: null,
  player: null,          // the latest PlayerState
  devices: [],
  epoch: 0,              // the newest lease epoch seen
  active: false,         // this page holds the lease
  clockOffset: 0,        // server time - local time, ms
  bestRoundTrip: Infinity,
  pending: new Map(),    // request id -> resolve
  counter: 0,
  lastReportAt: 0,
  endedVersion: -1,
  reconnectDelay: 500,
  retryHintMs: 0,        // the last close's retry_after_ms
  reconnectTimer: null,
  stopped: false,        // replaced or signed out: do not reconnect
};

// MARK: Identity and sign-in

function deviceIdFromStorage() {
  const fromURL = new URLSearchParams(location.search).get("device");
  if (fromURL && /^[A-Za-z0-9._-]{1,64}$/.test(fromURL)) return fromURL;
  let id = localStorage.getItem("playback.deviceId");
  if (!id) {
    id = "web-" + Math.random().toString(36).slice(2, 10);
    localStorage.setItem("playback.deviceId", id);
  }
  return id;
}

async function init() {
  app.device.id = deviceIdFromStorage();
  const name = new URLSearchParams(location.search).get("name") || localStorage.getItem("playback.deviceName");
  if (name) $("device-name").value = name;
  try {
    const dev = await (await fetch("/v1/dev")).json();
    $("user-field").hidden = !dev.development_tokens;
  } catch (_) {
    $("user-field").hidden = true;
  }
  $("signin-form").addEventListener("submit", signIn);
  wireControls();
  requestAnimationFrame(animate);
  setInterval(tick, 250);
}

async function signIn(event) {
  event.preventDefault();
  const error = $("signin-error");
  error.hidden = true;
  app.device.name = $("device-name").value.trim() || "Web remote";
  localStorage.setItem("playback.deviceName", app.device.name);
  let token = $("token").value.trim();
  try {
    if (!token) {
      const user = $("user-name").value.trim();
      if (!user) throw new Error("enter a user name or paste a token");
      const response = await fetch("/v1/dev/token", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message : "could not get a token");
      token = body.token;
    }
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
    return;
  }
  app.token = token;
  app.stopped = false;
  $("signin").hidden = true;
  $("remote").hidden = false;
  connect();
}

// MARK: Connection

function setStatus(state, text) {
  const element = $("connection");
  element.className = "status " + state;
  element.dataset.state = state;
  element.textContent = text || state;
}

function connect() {
  clearTimeout(app.reconnectTimer);
  setStatus("connecting", "connecting…");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/connect?access_token=${encodeURIComponent(app.token)}`);
  app.ws = ws;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    const hello = { type: "hello", device: app.device };
    if (app.player) hello.last_seen = { epoch: app.player.epoch, version: app.player.version };
    send(hello);
    for (let i = 0; i < 5; i++) setTimeout(() => send({ type: "clock", t0: Date.now() }), i * 200);
  };
  ws.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch (_) { return; }
    handle(message);
  };
  ws.onclose = (event) => {
    if (app.ws !== ws) return;
    app.ws = null;
    app.retryHintMs = retryHint(event.reason);
    app.active = false;
    for (const resolve of app.pending.values()) resolve({ type: "error", code: "unavailable", message: "connection lost" });
    app.pending.clear();
    if (event.code === 4001) {
      app.stopped = true;
      setStatus("offline", "replaced by another tab");
    } else if (event.code === 1008 && /token/.test(event.reason)) {
      signOut(event.reason);
    }
    render();
    if (app.stopped) return;
    if (!opened) {
      // Refused before the upgrade: a bad or expired token is answered 401, which a browser does
      // not show to WebSocket code. Ask the REST API what it thinks of the token.
      checkToken().then((refusal) => { if (refusal) signOut(refusal); else retry(); });
      return;
    }
    retry();
  };
}

async function checkToken() {
  try {
    const response = await fetch("/v1/me/player/devices", { headers: { Authorization: `Bearer ${app.token}` } });
    if (response.status !== 401) return null;
    const body = await response.json().catch(() => ({}));
    return body.error && body.error.message ? body.error.message : "the token was refused";
  } catch (_) {
    return null;  // the daemon is unreachable: keep retrying
  }
}

// The token is no good (bad, expired, revoked): back to the sign-in form, saying why.
function signOut(reason) {
  clearTimeout(app.reconnectTimer);
  app.stopped = true;
  app.token = null;
  setStatus("offline", "signed out");
  const error = $("signin-error");
  error.textContent = `Signed out: ${reason}. Sign in again.`;
  error.hidden = false;
  $("token").value = "";
  $("remote").hidden = true;
  $("signin").hidden = false;
}

// A close 1001 (the server drains) or 1013 (overloaded) may say when to come back:
// {"reason":"…","retry_after_ms":N} (PROTOCOL.md, section 9).
function retryHint(reason) {
  if (!reason || reason[0] !== "{") return 0;
  try {
    const hint = JSON.parse(reason).retry_after_ms;
    return Number.isFinite(hint) && hint >= 0 ? Math.min(hint, 60000) : 0;
  } catch (_) {
    return 0;
  }
}

// Exponential backoff with full jitter, never sooner than the server asked.
function retry() {
  if (app.stopped) return;
  const delay = Math.max(app.reconnectDelay * Math.random(), app.retryHintMs || 0);
  app.retryHintMs = 0;
  app.reconnectDelay = Math.min(app.reconnectDelay * 2, 15000);
  setStatus("offline", `offline, reconnecting in ${Math.round(delay / 100) / 10} s`);
  app.reconnectTimer = setTimeout(connect, delay);
}

function send(message) {
  if (app.ws && app.ws.readyState === WebSocket.OPEN) app.ws.send(JSON.stringify(message));
}

/// Sends a request with a fresh id; resolves with the ack, error or history answering it.
function request(message) {
  const id = `${app.device.id}-${++app.counter}`;
  return new Promise((resolve) => {
    app.pending.set(id, resolve);
    setTimeout(() => { if (app.pending.delete(id)) resolve({ type: "error", code: "timeout", message: "no answer" }); }, 10000);
    send({ ...message, id });
  });
}

async function command(op, args) {
  const answer = await request({ type: "command", op, args: args || {} });
  if (answer.type === "error") flash(`${op}: ${answer.message}`);
  return answer;
}

// One notice at a time: an error or a takeover. It fades after a while, a click dismisses it,
// and a newer state from a command clears it, so an old notice never lingers under a new state.
function notify(text, kind) {
  const notice = $("takeover");
  notice.textContent = text;
  notice.dataset.kind = kind;
  notice.hidden = false;
  clearTimeout(app.noticeTimer);
  app.noticeTimer = setTimeout(dismissNotice, kind === "error" ? 6000 : 10000);
}

function dismissNotice() {
  clearTimeout(app.noticeTimer);
  $("takeover").hidden = true;
}

function flash(text) { notify(text, "error"); }

// MARK: Messages

function newer(state) { return !app.player || state.version > app.player.version; }

function handle(message) {
  switch (message.type) {
    case "welcome":
      app.player = message.state;
      app.devices = message.devices;
      app.epoch = Math.max(app.epoch, message.state.epoch);
      app.active = message.state.active_device === app.device.id;
      app.reconnectDelay = 500;
      setStatus("online", "connected");
      loadHistory();
      break;
    case "state": {
      if (message.cause.op === "transfer_failed" && (!app.player || message.state.version >= app.player.version)) {
        // A transfer's target did not start in time: playback went back (the page that got it
        // back had this version with its grant already), or paused.
        const active = message.state.active_device;
        notify(`Couldn't start on ${deviceName(message.cause.device)} — ${active ? `back on ${deviceName(active)}` : "paused"}`, "takeover");
      }
      if (!newer(message.state)) return;
      const queue = message.state.queue === undefined ? app.player && app.player.queue : message.state.queue;
      app.player = { ...message.state, queue: queue || [] };
      if (message.state.active_device !== app.device.id) app.active = false;
      if (message.cause.op !== "report" && message.cause.op !== "volume") scheduleHistory();
      if (message.cause.op !== "report" && $("takeover").dataset.kind === "error") dismissNotice();
      break;
    }
    case "lease_granted":
      if (message.epoch < app.epoch) return;
      app.epoch = message.epoch;
      app.active = true;
      if (newer(message.state)) app.player = message.state;
      app.lastReportAt = 0;
      dismissNotice();
      scheduleHistory();
      break;
    case "lease_revoked":
      if (message.epoch < app.epoch) return;
      app.epoch = message.epoch;
      app.active = false;
      if (message.reason === "taken_over" || message.reason === "transferred") {
        notify(message.message + (message.by ? ` (${deviceName(message.by)})` : ""), "takeover");
      }
      scheduleHistory();
      break;
    case "devices":
      app.devices = message.devices;
      break;
    case "clock": {
      const now = Date.now();
      const roundTrip = now - message.t0;
      if (roundTrip < app.bestRoundTrip) {
        app.bestRoundTrip = roundTrip;
        app.clockOffset = message.server_time - (message.t0 + now) / 2;
      }
      return;
    }
    case "ack":
    case "error":
    case "history": {
      const resolve = message.id && app.pending.get(message.id);
      if (resolve) {
        app.pending.delete(message.id);
        resolve(message);
      } else if (message.type === "error" && !message.id) {
        flash(message.message);
      }
      return;
    }
  }
  render();
}

// MARK: Simulated playback (while this page holds the lease)

function serverNow() { return Date.now() + app.clockOffset; }

function position() {
  const p = app.player;
  if (!p || !p.track) return 0;
  const elapsed = p.is_playing ? serverNow() - p.position_at : 0;
  return Math.max(0, Math.min(p.track.duration_ms, p.position_ms + elapsed));
}

function tick() {
  const p = app.player;
  if (!app.active || !p || !p.track || !p.is_playing) return;
  const at = position();
  if (at >= p.track.duration_ms) {
    if (app.endedVersion === p.version) return;
    app.endedVersion = p.version;
    send({ type: "track_ended", epoch: app.epoch, track_id: p.track.id });
  } else if (serverNow() - app.lastReportAt >= REPORT_MS) {
    app.lastReportAt = serverNow();
    send({ type: "report", epoch: app.epoch, position_ms: Math.round(at), is_playing: true, track_id: p.track.id });
  }
}

// MARK: Rendering

function clock(ms) {
  const seconds = Math.floor(ms / 1000);
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

function deviceName(id) {
  const device = app.devices.find((d) => d.id === id);
  return device ? device.name : id;
}

function animate() {
  const p = app.player;
  if (p && p.track) {
    const at = position();
    $("position").textContent = clock(at);
    $("progress-fill").style.width = `${(100 * at) / p.track.duration_ms}%`;
  } else {
    $("position").textContent = "0:00";
    $("progress-fill").style.width = "0";
  }
  requestAnimationFrame(animate);
}

function button(label, title, onClick, disabled) {
  const element = document.createElement("button");
  element.textContent = label;
  element.title = title;
  element.disabled = !!disabled;
  element.addEventListener("click", onClick);
  return element;
}

/// "Play on Kitchen": the label follows the active device (render() keeps it current).
function playButton(track) {
  const element = button(`Play on ${playTargetName()}`, "Play now", () => command("play", { track_id: track.id, ...playTarget() }));
  element.dataset.playTarget = "";
  return element;
}

function render() {
  for (const element of document.querySelectorAll("[data-play-target]")) element.textContent = `Play on ${playTargetName()}`;
  const p = app.player;
  const online = app.ws && app.ws.readyState === WebSocket.OPEN;
  const loaded = !!(p && p.track);
  $("track-title").textContent = loaded ? p.track.title : "Nothing playing";
  $("track-artist").textContent = loaded ? p.track.artist : "";
  $("duration").textContent = loaded ? clock(p.track.duration_ms) : "0:00";
  const where = p && p.active_device ? deviceName(p.active_device) + (p.active_device === app.device.id ? " (this page)" : "") : null;
  $("active-on").textContent = where ? `${p.is_playing ? "Playing" : "Paused"} on ${where}` : "No active device";
  const playPause = $("play-pause");
  playPause.textContent = p && p.is_playing ? "Pause" : "Play";
  playPause.title = p && p.is_playing ? "Pause" : "Play";
  playPause.dataset.playing = p && p.is_playing ? "true" : "false";
  playPause.disabled = !online || !loaded;
  for (const id of ["previous", "next", "repeat", "shuffle", "volume"]) $(id).disabled = !online || (!loaded && id !== "volume");
  $("repeat").textContent = `Repeat: ${p ? p.repeat : "off"}`;
  $("repeat").title = `Repeat: ${p ? p.repeat : "off"}`;
  $("shuffle").setAttribute("aria-pressed", p && p.shuffle ? "true" : "false");
  if (document.activeElement !== $("volume") && p) $("volume").value = p.volume;
  $("volume-value").textContent = `${$("volume").value} %`;
  document.body.dataset.active = app.active ? "true" : "false";

  const devices = $("devices");
  devices.replaceChildren();
  for (const device of app.devices) {
    const item = document.createElement("li");
    item.dataset.device = device.id;
    const isActive = p && p.active_device === device.id;
    item.className = (isActive ? "active " : "") + (device.online ? "online" : "offline");
    const name = document.createElement("span");
    name.className = "name grow";
    name.textContent = `${device.name}${device.id === app.device.id ? " (this page)" : ""}`;
    const kind = document.createElement("span");
    kind.className = "small";
    kind.textContent = device.online ? device.kind : `${device.kind}, offline`;
    // Each device keeps its own volume; the active one's is the slider's.
    const volume = isActive && p ? p.volume : device.volume_percent;
    if (volume !== undefined) kind.textContent += `, volume ${volume} %`;
    // How far away it is: the connection's last measured round trip.
    if (device.online && device.rtt_ms !== undefined) kind.textContent += `, ${device.rtt_ms} ms`;
    item.append(name, kind);
    const mine = device.id === app.device.id;
    const label = mine ? "Play here" : "Transfer";
    item.append(button(label, mine ? "Move playback to this page" : `Move playback to ${device.name}`,
      () => command("transfer", { device: device.id, play: true }), !online || !loaded || !device.online || isActive));
    devices.append(item);
  }

  const queue = $("queue");
  queue.replaceChildren();
  const entries = (p && p.queue) || [];
  entries.slice(0, 30).forEach((entry, index) => {
    const item = document.createElement("li");
    item.dataset.entry = entry.entry;
    const text = document.createElement("span");
    text.className = "grow";
    text.textContent = `${entry.track.title} — ${entry.track.artist}`;
    item.append(text);
    if (entry.source === "queue") {
      item.append(
        button("Up", "Move up", () => command("queue_move", { entry: entry.entry, to: index - 1 }), index === 0),
        button("Down", "Move down", () => command("queue_move", { entry: entry.entry, to: index + 1 })),
        button("Remove", "Remove", () => command("queue_remove", { entry: entry.entry })));
    } else {
      const source = document.createElement("span");
      source.className = "small";
      source.textContent = "from the context";
      item.append(source, button("Remove", "Remove", () => command("queue_remove", { entry: entry.entry })));
    }
    queue.append(item);
  });
}

// MARK: Controls

function wireControls() {
  $("play-pause").addEventListener("click", () => command(app.player && app.player.is_playing ? "pause" : "play", playTarget()));
  $("previous").addEventListener("click", () => command("previous"));
  $("next").addEventListener("click", () => command("next"));
  $("repeat").addEventListener("click", () => command("repeat", { mode: REPEAT_NEXT[(app.player && app.player.repeat) || "off"] }));
  $("shuffle").addEventListener("click", () => command("shuffle", { on: !(app.player && app.player.shuffle) }));
  $("volume").addEventListener("change", (event) => command("volume", { percent: Number(event.target.value) }));
  $("volume").addEventListener("input", (event) => { $("volume-value").textContent = `${event.target.value} %`; });
  $("takeover").addEventListener("click", dismissNotice);
  $("progress-bar").addEventListener("click", (event) => {
    const p = app.player;
    if (!p || !p.track) return;
    const rect = event.currentTarget.getBoundingClientRect();
    const fraction = Math.max(0, Math.min(1, (event.clientX - rect.left) / rect.width));
    command("seek", { position_ms: Math.round(fraction * p.track.duration_ms) });
  });
  $("search-form").addEventListener("submit", search);
}

/// Play resumes on the active device, or here when nobody is active.
function playTarget() {
  return app.player && app.player.active_device ? {} : { device: app.device.id };
}

/// Where "Play" in the search results plays, for its label.
function playTargetName() {
  const active = app.player && app.player.active_device;
  return active && active !== app.device.id ? deviceName(active) : "this browser";
}

async function search(event) {
  event.preventDefault();
  const query = $("search").value.trim();
  const response = await fetch(`/v1/tracks?limit=10&q=${encodeURIComponent(query)}`, {
    headers: { Authorization: `Bearer ${app.token}` },
  });
  const results = $("results");
  results.replaceChildren();
  if (!response.ok) return flash("search failed");
  for (const track of (await response.json()).tracks) {
    const item = document.createElement("li");
    item.dataset.track = track.id;
    const text = document.createElement("span");
    text.className = "grow";
    text.textContent = `${track.title} — ${track.artist} (${clock(track.duration_ms)})`;
    item.append(text,
      playButton(track),
      button("Add", "Add to the queue", () => command("queue_add", { track_id: track.id })));
    results.append(item);
  }
}

/// Reloads recently played shortly after changes that may have ended a play (one request per burst).
let historyTimer = null;
function scheduleHistory() {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(loadHistory, 400);
}

async function loadHistory() {
  const answer = await request({ type: "history", limit: 10 });
  if (answer.type !== "history") return;
  const list = $("history");
  list.replaceChildren();
  for (const item of answer.items) {
    const entry = document.createElement("li");
    entry.textContent = `${item.track.title} — ${item.track.artist}: ${clock(item.ms_played)} on ${item.device ? deviceName(item.device.id) : "?"}, ${item.reason}`;
    list.append(entry);
  }
}

init();

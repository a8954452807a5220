// tympan's browser page: the microphone, captured as 16 kHz PCM16 by capture-worklet.js, streamed
// to the daemon's /v1/stream (wire protocol v1); partials shown greyed, finals appended.
// Every event received is also kept in window.tympanEvents (for debugging and the tests).

const $ = (id) => document.getElementById(id);
const ui = {
  task: $("task"), lang: $("lang"), question: $("question"), questionField: $("question-field"),
  start: $("start"), stop: $("stop"), level: $("level"), status: $("status"), problem: $("problem"),
  finals: $("finals"), stable: document.querySelector("#partial .stable"),
  unstable: document.querySelector("#partial .unstable"),
};
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 8000;
const CLOSE_REASONS = { 1001: "the daemon is shutting down", 1006: "the daemon cannot be reached",
  1011: "the daemon had an internal error", 1013: "the daemon is at capacity" };
// What each task can produce; replaced by what the daemon's model says it can do once connected.
let languages = { asr: ["en"], st: ["de", "it", "zh"], sqa: ["en", "de", "it", "zh"] };

window.tympanEvents = [];
let capture = null; // {stream, ctx, node} while the microphone is open
let ws = null; // the current websocket
let wanted = false; // the user pressed Start and not Stop: keep (re)connecting
let attempt = 0; // reconnection attempts since the last successful start
let retryTimer = null;

// -- the request ----------------------------------------------------------------------------

function request() {
  const r = { task: ui.task.value, target_lang: ui.lang.value };
  if (r.task === "sqa") r.question = ui.question.value.trim();
  return r;
}

function constrain() {
  for (const opt of ui.task.options) opt.disabled = !languages[opt.value]?.length;
  const allowed = languages[ui.task.value] || [];
  for (const opt of ui.lang.options) opt.disabled = !allowed.includes(opt.value);
  if (!allowed.includes(ui.lang.value) && allowed.length) ui.lang.value = allowed[0];
  ui.lang.disabled = allowed.length < 2;
  ui.questionField.hidden = ui.task.value !== "sqa";
}

function needsQuestion() {
  if (ui.task.value !== "sqa" || ui.question.value.trim()) return false;
  showProblem("Type a question first: SQA answers a question about what is said.");
  ui.question.focus();
  return true;
}

function requestChanged() {
  constrain();
  if (ws?.readyState === WebSocket.OPEN && !needsQuestion()) {
    ws.send(JSON.stringify({ type: "config", ...request() }));
    setStatus(`Streaming; from the next utterance: ${describe(request())}.`);
  }
}

function describe(r) {
  return `${ui.task.selectedOptions[0].text} into ${ui.lang.selectedOptions[0].text}` +
    (r.question ? ` (“${r.question}”)` : "");
}

// -- status and problems ----------------------------------------------------------------------

function setStatus(text) {
  ui.status.textContent = text;
}

function showProblem(text, kind = "error") {
  ui.problem.textContent = text;
  ui.problem.className = kind;
  ui.problem.hidden = false;
}

function clearProblem() {
  ui.problem.hidden = true;
  ui.problem.textContent = "";
}

function microphoneProblem(e) {
  switch (e.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was refused. Allow the microphone for this site (the icon in the address " +
        "bar, or the browser's site settings; on some systems also the operating system's privacy settings), " +
        "then press Start again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Connect one (or enable it in the system's sound settings), " +
        "then press Start again.";
    case "InsecureContext":
      return `This page cannot use the microphone: ${e.message}.`;
    case "NotReadableError":
      return "The microphone could not be opened: another application may be using it. Close that " +
        "application, then press Start again.";
    default:
      return `The microphone could not be opened (${e.name}: ${e.message}).`;
  }
}

// -- the microphone -----------------------------------------------------------------------------

async function openMicrophone() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw Object.assign(new Error("browsers give the microphone only to pages on https:// or on " +
      "localhost: open this page through https (the daemon's [tls] settings) or from this machine"),
    { name: "InsecureContext" });
  }
  // Raw audio: the daemon has its own voice detection and the model was trained without processing.
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  try {
    const ctx = new AudioContext();
    await ctx.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
    const node = new AudioWorkletNode(ctx, "capture", { numberOfOutputs: 0 });
    ctx.createMediaStreamSource(stream).connect(node);
    node.port.onmessage = (e) => (e.data instanceof Int16Array ? onAudio(e.data) : node.port.onflushed?.());
    await ctx.resume();
    stream.getAudioTracks()[0].onended = () => {
      showProblem("The microphone stopped (unplugged or disabled). Press Start to try again.");
      stop();
    };
    return { stream, ctx, node };
  } catch (e) {
    stream.getTracks().forEach((t) => t.stop());
    throw e;
  }
}

function flushMicrophone() {
  // The samples still in the worklet, so the end of the last word reaches the daemon.
  return new Promise((resolve) => {
    capture.node.port.onflushed = resolve;
    capture.node.port.postMessage("flush");
    setTimeout(resolve, 300);
  });
}

function closeMicrophone() {
  if (!capture) return;
  capture.stream.getTracks().forEach((t) => t.stop());
  capture.ctx.close();
  capture = null;
  ui.level.value = 0;
}

function onAudio(pcm) {
  let sum = 0;
  for (const s of pcm) sum += s * s;
  const db = 10 * Math.log10(sum / pcm.length / 32768 ** 2 + 1e-10); // RMS, dB full scale
  ui.level.value = Math.max(0, Math.min(1, (db + 60) / 60));
  if (ws?.readyState === WebSocket.OPEN && ws.bufferedAmount < 1 << 20) ws.send(pcm);
}

// -- the daemon --------------------------------------------------------------------------------

function streamUrl() {
  const url = new URL("v1/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const token = new URLSearchParams(location.search).get("token");
  url.search = token ? `?token=${encodeURIComponent(token)}` : "";
  return url.href;
}

function connect() {
  retryTimer = null;
  setStatus(attempt ? `Reconnecting to the daemon (attempt ${attempt})…` : "Connecting to the daemon…");
  const sock = (ws = new WebSocket(streamUrl()));
  sock.binaryType = "arraybuffer";
  sock.onopen = () => {
    sock.opened = true;
    sock.send(JSON.stringify({ type: "start", ...request(), sample_rate: 16000, encoding: "pcm_s16le" }));
  };
  sock.onmessage = (e) => onEvent(JSON.parse(e.data), sock);
  sock.onclose = (e) => onClose(sock, e);
}

function onEvent(ev, sock) {
  window.tympanEvents.push(ev);
  switch (ev.type) {
    case "ready":
      sock.ready = true;
      attempt = 0;
      clearProblem();
      if (ev.model?.tasks) {
        languages = ev.model.tasks;
        constrain();
      }
      setStatus(`Streaming: ${describe(request())}. Session ${ev.session_id}.`);
      break;
    case "partial": {
      const n = Math.min(ev.stable_len, ev.text.length);
      ui.stable.textContent = ev.text.slice(0, n);
      ui.unstable.textContent = ev.text.slice(n);
      ui.stable.parentElement.dataset.segment = ev.segment_id;
      break;
    }
    case "final":
      addFinal(ev);
      if (ui.stable.parentElement.dataset.segment === String(ev.segment_id)) showPartial("");
      break;
    case "error":
      sock.lastError = `The daemon reported an error (${ev.code}): ${ev.message}`;
      sock.refused = !sock.ready && ev.code !== "overloaded"; // the start was refused: retrying would not help
      showProblem(sock.lastError);
      break;
    case "done":
      sock.close(1000, "done");
      break;
  }
}

function showPartial(text) {
  ui.stable.textContent = text;
  ui.unstable.textContent = "";
}

function addFinal(ev) {
  const li = document.createElement("li");
  Object.assign(li.dataset, { segment: ev.segment_id, start: ev.start, end: ev.end });
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `${ev.start.toFixed(2)}–${ev.end.toFixed(2)} s`;
  const text = document.createElement("span");
  text.className = ev.text ? "text" : "text empty";
  text.lang = ev.target_lang;
  text.textContent = ev.text;
  li.append(time, text);
  ui.finals.append(li);
}

async function onClose(sock, e) {
  if (sock !== ws) return;
  ws = null;
  showPartial("");
  if (!wanted) {
    setStatus(e.code === 1000 ? "Stopped." : `Stopped (the connection closed: ${e.reason || e.code}).`);
    return;
  }
  if (sock.refused) return stop("Stopped: the daemon refused the request (see above).");
  if (!sock.opened && (await daemonIsUp())) {
    showProblem("The daemon is running but refused the websocket: check the ?token=… in this page's " +
      "address (the daemon's auth.token) and the daemon's auth.allowed_origins.");
    return stop("Stopped.");
  }
  if (!wanted) return;
  attempt += 1;
  const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** (attempt - 1));
  const why = e.reason || CLOSE_REASONS[e.code] || `connection closed, code ${e.code}`;
  const what = ((!sock.ready && sock.lastError) || `Lost the daemon (${why})`).replace(/\.$/, "");
  showProblem(`${what}. Reconnecting in ${(delay / 1000).toFixed(1)} s ` +
    `(attempt ${attempt}); speech until then is not transcribed.`, "warn");
  setStatus(`Disconnected; reconnecting in ${(delay / 1000).toFixed(1)} s…`);
  retryTimer = setTimeout(connect, delay);
}

async function daemonIsUp() {
  try {
    return (await fetch(new URL("healthz", location.href), { cache: "no-store" })).ok;
  } catch {
    return false;
  }
}

// -- start and stop ------------------------------------------------------------------------------

async function start() {
  clearProblem();
  if (needsQuestion()) return;
  ui.start.disabled = true;
  setStatus("Opening the microphone…");
  try {
    capture = await openMicrophone();
  } catch (e) {
    showProblem(microphoneProblem(e));
    setStatus("Idle.");
    ui.start.disabled = false;
    return;
  }
  wanted = true;
  attempt = 0;
  ui.stop.disabled = false;
  connect();
}

async function stop(message = "Stopping: waiting for the last results…") {
  if (!capture && !ws) return;
  wanted = false;
  ui.stop.disabled = true;
  clearTimeout(retryTimer);
  if (ui.problem.className === "warn") clearProblem(); // "reconnecting in ...": no longer true
  setStatus(message);
  if (capture && ws?.readyState === WebSocket.OPEN) await flushMicrophone();
  closeMicrophone();
  const sock = ws;
  if (sock?.readyState === WebSocket.OPEN) {
    sock.send(JSON.stringify({ type: "stop" })); // the daemon sends the last finals, then `done`
    setTimeout(() => sock.close(1000, "no done in time"), 15000);
  } else if (sock) {
    ws = null;
    sock.close();
  }
  if (!ws) setStatus(message.startsWith("Stopping") ? "Stopped." : message);
  ui.start.disabled = false;
}

$("controls").addEventListener("submit", (e) => e.preventDefault()); // Enter in the question: no reload
ui.task.addEventListener("change", requestChanged);
ui.lang.addEventListener("change", requestChanged);
ui.question.addEventListener("change", requestChanged);
ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => stop());
constrain();

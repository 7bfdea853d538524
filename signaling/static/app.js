// avatar-chat web page: one live session over WebRTC (docs/protocol.md), no build step.
//
//   microphone -> RTCPeerConnection (audio sendrecv, video recvonly, "events" data channel)
//   render=browser (?render=browser, or the server's default): no video; a "motion" data channel
//   carries a few numbers a frame and face.js draws the face on a canvas, in step with the audio
//   POST /v1/sessions (application/sdp, non-trickle: candidates gathered first) -> answer
//   events in: state, transcripts (user final; avatar deltas, then final), timings, interruption,
//   error, closed
//   events out: {"type": "text", "text": ...}, {"type": "interrupt"}
//   DELETE Location on Stop and when the page goes away (fetch keepalive; sendBeacon cannot DELETE)
//   no microphone API (plain http off localhost): say so, and run text-only with a silent track
"use strict";

(() => {
  const MIC_CONSTRAINTS = {audio: {echoCancellation: true, noiseSuppression: true, autoGainControl: true}};
  const GATHER_TIMEOUT_MS = 5000;    // send what we have if ICE gathering takes longer
  const CONNECT_TIMEOUT_MS = 20000;  // the server gives up after sessions.connect_timeout_s (15 s)
  const STATE_LABELS = {off: "not connected", connecting: "connecting…", listening: "listening",
                        thinking: "thinking…", speaking: "speaking"};
  const TIMING_LABELS = [
    ["voice_to_voice", "end of your speech → avatar's voice", "s"],
    ["text_to_voice", "your message → avatar's voice", "s"],
    ["end_of_turn_decision", "deciding you had finished", "s"],
    ["input_to_first_frame", "end of your input → first avatar frame", "s"],
    ["asr", "speech recognition", "s"],
    ["llm_first_token", "first LLM token", "s"],
    ["llm_total", "LLM, whole reply", "s"],
    ["tts_first_audio", "first synthesized audio", "s"],
    ["avatar_first_frame", "first avatar frame", "s"],
    ["reply_audio", "reply length", "s"],
    ["tokens", "tokens", "n"],
    ["sentences", "sentences", "n"],
    ["session_turn", "turns started in this session", "n"],
  ];

  const $ = (id) => document.getElementById(id);
  const ui = {
    state: $("state"), notice: $("notice"), video: $("avatar"), face: $("face"), placeholder: $("placeholder"),
    start: $("start"), stop: $("stop"), mute: $("mute"), interrupt: $("interrupt"),
    transcript: $("transcript"), form: $("text-form"), text: $("text"), send: $("send"),
    timings: $("timings"), tokenBox: $("token-box"), token: $("token"),
  };

  let session = null;  // the live session: {pc, channel, mic, location, ended, avatarLine, ...}
  const events = [];   // events received (the last 500), for debugging and tests

  // -- what the page shows ---------------------------------------------------------------------
  function showNotice(reason, text) {
    ui.notice.hidden = false;
    ui.notice.dataset.reason = reason;
    ui.notice.textContent = text;
  }

  function clearNotice() {
    ui.notice.hidden = true;
    ui.notice.dataset.reason = "";
    ui.notice.textContent = "";
  }

  function setState(state) {
    ui.state.dataset.state = state;
    ui.state.textContent = STATE_LABELS[state] || state;
  }

  function setControls(phase) {  // "off" | "connecting" | "live"
    const live = phase === "live";
    ui.start.disabled = phase !== "off";
    ui.stop.disabled = phase === "off";
    ui.mute.disabled = !live;
    ui.interrupt.disabled = !live;
    ui.text.disabled = !live;
    ui.send.disabled = !live;
    if (phase === "off") {
      ui.mute.textContent = "Mute microphone";
      ui.mute.setAttribute("aria-pressed", "false");
    }
  }

  // What the ASR heard besides the words (SenseVoice: language, emotion, audio event), shown as a
  // small note after the user's line; English speech with no emotion shows nothing.
  const LANGUAGE_NAMES = {zh: "中文", yue: "粵語", ja: "日本語", ko: "한국어", en: "English"};
  function showHeard(li, ev) {
    const notes = [];
    if (ev.language && ev.language !== "en") notes.push(LANGUAGE_NAMES[ev.language] || ev.language);
    if (ev.emotion && !/^(neutral|emo_unknown)$/i.test(ev.emotion)) notes.push(ev.emotion.toLowerCase());
    if (ev.event && !/^speech$/i.test(ev.event)) notes.push(ev.event);
    if (ev.language) li.querySelector(".text").lang = ev.language;
    if (!notes.length) return;
    const meta = document.createElement("span");
    meta.className = "heard";
    meta.textContent = notes.join(" · ");
    li.append(meta);
  }

  function addLine(role, text, extraClass, language) {
    const li = document.createElement("li");
    li.className = `line ${role}` + (extraClass ? ` ${extraClass}` : "");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = {user: "You", avatar: "Avatar", system: ""}[role];
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    if (language) body.lang = language;  // the right CJK glyphs for the reply's language
    li.append(who, body);
    ui.transcript.append(li);
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
    return li;
  }

  function finishAvatarLine(s, finalText, interrupted) {
    const li = s.avatarLine;
    s.avatarLine = null;
    if (!li) return;
    if (finalText !== undefined) li.querySelector(".text").textContent = finalText;
    li.classList.remove("streaming");
    li.classList.add(interrupted ? "interrupted" : "final");
  }

  function showTimings(t) {
    const rows = [];
    for (const [key, label, unit] of TIMING_LABELS) {
      const v = t[key];
      if (v === null || v === undefined) continue;
      const value = unit === "n" ? String(Math.round(v))
        : v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(2)} s`;
      rows.push([label, value, key]);
    }
    ui.timings.tBodies[0].replaceChildren(...rows.map(([label, value, key]) => {
      const tr = document.createElement("tr");
      tr.dataset.key = key;
      const a = document.createElement("td");
      const b = document.createElement("td");
      a.textContent = label;
      b.textContent = value;
      tr.append(a, b);
      return tr;
    }));
  }

  // -- events from the server ------------------------------------------------------------------
  function onEvent(s, ev) {
    events.push(ev);
    if (events.length > 500) events.shift();
    switch (ev.type) {
      case "state":
        setState(ev.state);
        break;
      case "transcript":
        if (ev.role === "user") {
          // A new turn: a reply still streaming was cut off (barge-in or a new message).
          finishAvatarLine(s, undefined, true);
          s.ignoreDeltas = false;
          if (s.userPartial) s.userPartial.remove();
          s.userPartial = null;
          const li = addLine("user", ev.text, ev.final ? "final" : "partial");
          showHeard(li, ev);
          s.language = ev.language || null;
          if (!ev.final) s.userPartial = li;
        } else if (!ev.final) {
          if (s.ignoreDeltas) break;
          if (!s.avatarLine) s.avatarLine = addLine("avatar", "", "streaming", s.language);
          s.avatarLine.querySelector(".text").textContent += ev.text;
          ui.transcript.scrollTop = ui.transcript.scrollHeight;
        } else {
          if (!s.avatarLine) s.avatarLine = addLine("avatar", "", "streaming");
          finishAvatarLine(s, ev.text, false);
        }
        break;
      case "timings":
        showTimings(ev);
        break;
      case "interruption":
        // The avatar stopped for the user: keep only what was heard on its line.
        finishAvatarLine(s, ev.heard_text ? ev.heard_text + " …" : "…", true);
        s.ignoreDeltas = true;
        if (ev.speech_onset_to_silence !== undefined) {
          addLine("system", `interrupted: the avatar went quiet ${Math.round(ev.speech_onset_to_silence * 1000)} ms after you spoke`, "info");
        }
        break;
      case "error":
        addLine("system", `${ev.stage} error: ${ev.reason}`, "error");
        if (ev.stage !== "input") finishAvatarLine(s, undefined, true);
        break;
      case "closed":
        s.closedReason = ev.reason;
        break;
    }
  }

  // -- starting ----------------------------------------------------------------------------------
  // Browsers offer the microphone only to secure pages: HTTPS, or http://localhost on this machine.
  const NEEDS_HTTPS = "The microphone needs HTTPS: browsers give it to a page only over https:// or on "
    + "http://localhost / http://127.0.0.1 on this machine. Serve this site over HTTPS (see "
    + "docs/deployment.md, \u201cHTTPS on a LAN\u201d), or open it on the server itself.";
  const noMicrophoneApi = () => !window.isSecureContext || !navigator.mediaDevices
    || !navigator.mediaDevices.getUserMedia;

  // A silent audio track in place of a microphone, so a session (and the text box) still works.
  function silentMicrophone() {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    const ctx = new Ctx();
    const out = ctx.createMediaStreamDestination();
    const zero = ctx.createConstantSource();
    zero.offset.value = 0;
    zero.connect(out);
    zero.start();
    ctx.resume().catch(() => {});
    return {stream: out.stream, ctx};
  }

  function microphoneProblem(err) {
    if (noMicrophoneApi()) return NEEDS_HTTPS;
    switch (err && err.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "No microphone permission. Allow microphone access for this site (the icon in the "
          + "address bar), then press Start again.";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No microphone was found. Connect one, then press Start again.";
      case "NotReadableError":
        return "The microphone could not be opened (another application may be using it).";
      default:
        return `The microphone could not be opened: ${err && err.message ? err.message : err}`;
    }
  }

  // -- the access token (docs/deployment.md, "Access"): asked for once the server answers 401, kept
  // for this tab only (sessionStorage), sent as a bearer token on every request
  const TOKEN_KEY = "avatar-chat-token";

  function withToken(options = {}) {
    const typed = ui.token.value.trim();
    if (typed) sessionStorage.setItem(TOKEN_KEY, typed);
    const token = typed || sessionStorage.getItem(TOKEN_KEY);
    return token ? {...options, headers: {...(options.headers || {}), Authorization: `Bearer ${token}`}} : options;
  }

  class Refused extends Error {
    constructor(reason, text) { super(text); this.reason = reason; }
  }

  async function refusal(res) {
    let why = "";
    try { why = (await res.json()).error || ""; } catch (_) { /* not JSON */ }
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      ui.tokenBox.hidden = false;
      return new Refused("needs-token", "This service needs an access token: enter it beside the buttons "
        + "and press Start again." + (why ? ` (${why})` : ""));
    }
    if (res.status === 429) {
      const retry = res.headers.get("Retry-After");
      return new Refused("too-many-pending", "Too many sessions from your address are still connecting. "
        + (retry ? `Try again in ${retry} s.` : "Try again in a moment.") + (why ? ` (${why})` : ""));
    }
    if (res.status === 503) {
      const retry = res.headers.get("Retry-After");
      return new Refused("server-full", "The server is full. "
        + (retry ? `Try again in ${retry} s.` : "Try again in a moment.") + (why ? ` (${why})` : ""));
    }
    return new Refused("refused", `The server refused the session (HTTP ${res.status})${why ? `: ${why}` : "."}`);
  }

  async function iceServers() {
    const res = await fetch("/v1/ice", withToken({cache: "no-store"}));
    if (res.status === 401) throw await refusal(res);
    if (!res.ok) throw new Error(`GET /v1/ice answered HTTP ${res.status}`);
    return (await res.json()).iceServers || [];
  }

  function gathered(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      const timer = setTimeout(done, GATHER_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  async function start() {
    if (session) return;
    // play() inside the click unlocks the element for playback with sound (autoplay policy); the
    // promise settles once the avatar's tracks arrive, or fails harmlessly when they replace it.
    ui.video.play().catch(() => {});
    clearNotice();
    stopFace();
    setControls("connecting");
    setState("connecting");
    let mic, audioContext = null;
    const textOnly = noMicrophoneApi();
    try {
      if (textOnly) ({stream: mic, ctx: audioContext} = silentMicrophone());
      else mic = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    } catch (err) {
      showNotice("no-microphone", microphoneProblem(err));
      setControls("off");
      setState("off");
      return;
    }
    if (textOnly) showNotice("needs-https", `${NEEDS_HTTPS} Typing works: this session is text-only.`);
    const s = session = {mic, audioContext, textOnly, pc: null, channel: null, location: null, ended: false,
                         avatarLine: null, userPartial: null, ignoreDeltas: false, closedReason: null,
                         render: "server", motion: null, face: null};
    try {
      const [servers, render] = await Promise.all([iceServers(), renderMode()]);
      s.render = render;
      const pc = s.pc = new RTCPeerConnection({iceServers: servers});
      if (s.ended) return;
      pc.addTransceiver(mic.getAudioTracks()[0], {direction: "sendrecv", streams: [mic]});
      if (render === "browser") {
        // a late face is useless: unordered, never retransmitted
        s.motion = pc.createDataChannel("motion", {ordered: false, maxRetransmits: 0});
        s.motion.binaryType = "arraybuffer";
        s.facePromise = loadFace();
      } else {
        pc.addTransceiver("video", {direction: "recvonly"});
      }
      s.channel = pc.createDataChannel("events");
      watch(s);
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      if (s.ended) return;
      // the server's default needs no parameter; a mode asked for in the page's address does
      const query = askedRender() ? `?render=${encodeURIComponent(render)}` : "";
      const res = await fetch(`/v1/sessions${query}`, withToken({
        method: "POST", headers: {"Content-Type": "application/sdp"}, body: pc.localDescription.sdp}));
      if (res.status !== 201) throw await refusal(res);
      if (s.motion) {
        const renderer = await s.facePromise;
        if (s.ended) return;
        const audio = pc.getReceivers().find((r) => r.track && r.track.kind === "audio");
        s.face = faceView.player = new window.AvatarFace.FacePlayer(renderer, audio || null);
        s.motion.addEventListener("message", (e) => s.face.onPacket(e.data));
      }
      const where = res.headers.get("Location");
      s.location = where ? new URL(where, window.location.href).href : null;
      const answer = await res.text();
      if (s.ended) { hangUp(s); return; }  // Stop was pressed while the offer was on its way
      await pc.setRemoteDescription({type: "answer", sdp: answer});
      s.connectTimer = setTimeout(() => {
        if (!s.ended && pc.connectionState !== "connected") {
          end(s, "connection-failed", "Connection failed: no media path to the server could be set up "
            + "(a firewall, or a NAT that needs a TURN server).");
        }
      }, CONNECT_TIMEOUT_MS);
    } catch (err) {
      if (err instanceof Refused) end(s, err.reason, err.message);
      else if (err instanceof TypeError) end(s, "connection-failed", `Connection failed: the server could not be reached (${err.message}).`);
      else end(s, "connection-failed", `Connection failed: ${err && err.message ? err.message : err}`);
    }
  }

  // -- the face drawn here (render=browser) ---------------------------------------------------------
  const faceView = {renderer: null, player: null, packPromise: null};

  // ?render= in the page's address, else the server's default (the first mode it offers)
  const askedRender = () => new URLSearchParams(window.location.search).get("render");

  async function renderMode() {
    const asked = askedRender();
    if (asked) return asked;
    try {
      const res = await fetch("/v1/sessions", withToken({cache: "no-store"}));
      const modes = (await res.json()).render;
      if (Array.isArray(modes) && modes.length) return modes[0];
    } catch (_) { /* an older server: video */ }
    return "server";
  }

  async function loadFace() {
    if (!faceView.packPromise) {
      faceView.packPromise = fetch("/v1/avatar", withToken()).then((res) => {
        if (!res.ok) throw new Error(`GET /v1/avatar answered HTTP ${res.status}`);
        return res.json();
      });
    }
    const pack = await faceView.packPromise;
    if (!faceView.renderer) faceView.renderer = await window.AvatarFace.FaceRenderer.load(pack, ui.face);
    const r = faceView.renderer;
    r.draw(r.motionFromList([]));  // the resting face until the first packet
    ui.face.hidden = false;
    ui.video.classList.add("audio-only");
    ui.placeholder.hidden = true;
    return r;
  }

  function stopFace() {
    if (faceView.player) faceView.player.stop();
    faceView.player = null;
    ui.face.hidden = true;
    ui.video.classList.remove("audio-only");
  }

  function watch(s) {
    const {pc, channel} = s;
    pc.addEventListener("track", (e) => {
      // One stream for the avatar's voice and face: the video element plays both, in sync.
      if (!(ui.video.srcObject instanceof MediaStream)) ui.video.srcObject = new MediaStream();
      ui.video.srcObject.addTrack(e.track);
      ui.placeholder.hidden = true;
      ui.video.play().catch((err) => {
        if (err && err.name === "NotAllowedError") {
          showNotice("autoplay", "The browser blocked playback: click the video to hear the avatar.");
        }
      });
    });
    const failed = () => {
      if (!s.ended) {
        end(s, "connection-failed", "Connection failed: the media connection to the server was lost "
          + "or could not be set up.");
      }
    };
    pc.addEventListener("connectionstatechange", () => {
      const state = pc.connectionState;
      if (state === "connected") {
        clearTimeout(s.connectTimer);
        if (ui.notice.dataset.reason === "reconnecting") clearNotice();
      } else if (state === "disconnected") {
        showNotice("reconnecting", "The connection is interrupted; trying to recover…");
      } else if (state === "failed") {
        failed();
      }
    });
    pc.addEventListener("iceconnectionstatechange", () => {
      if (pc.iceConnectionState === "failed") failed();
    });
    channel.addEventListener("open", () => {
      if (s.ended) return;
      setControls("live");
      if (s.textOnly) ui.mute.disabled = true;  // nothing to mute
      ui.text.focus();
    });
    channel.addEventListener("message", (e) => {
      let ev;
      try { ev = JSON.parse(e.data); } catch (_) { return; }
      onEvent(s, ev);
    });
    channel.addEventListener("close", () => {
      if (s.ended) return;
      if (s.closedReason) end(s, "ended", `The server ended the session: ${s.closedReason}.`);
      else end(s, "connection-failed", "Connection failed: the session's channel closed unexpectedly.");
    });
  }

  // -- ending ----------------------------------------------------------------------------------
  function hangUp(s) {
    if (s.location) {
      // keepalive: the request outlives the page (sendBeacon can only POST).
      fetch(s.location, withToken({method: "DELETE", keepalive: true})).catch(() => {});
      s.location = null;
    }
  }

  function end(s, reason, message) {
    if (s.ended) return;
    s.ended = true;
    clearTimeout(s.connectTimer);
    hangUp(s);
    finishAvatarLine(s, undefined, true);
    try { if (s.channel) s.channel.close(); } catch (_) { /* closing anyway */ }
    try { if (s.pc) s.pc.close(); } catch (_) { /* closing anyway */ }
    for (const track of s.mic.getTracks()) track.stop();
    if (s.audioContext) s.audioContext.close().catch(() => {});
    ui.video.srcObject = null;
    stopFace();
    ui.placeholder.hidden = false;
    if (session === s) session = null;
    setControls("off");
    setState("off");
    if (message) showNotice(reason, message);
  }

  // -- controls --------------------------------------------------------------------------------
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", () => { if (session) end(session, "stopped", ""); clearNotice(); });
  ui.mute.addEventListener("click", () => {
    if (!session) return;
    const track = session.mic.getAudioTracks()[0];
    track.enabled = !track.enabled;  // a disabled track still sends silence: the session stays up
    ui.mute.textContent = track.enabled ? "Mute microphone" : "Unmute microphone";
    ui.mute.setAttribute("aria-pressed", String(!track.enabled));
  });
  ui.interrupt.addEventListener("click", () => {
    const s = session;
    if (!s || !s.channel || s.channel.readyState !== "open") return;
    s.channel.send(JSON.stringify({type: "interrupt"}));
    finishAvatarLine(s, undefined, true);
    s.ignoreDeltas = true;  // until the next turn's user transcript
  });
  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const s = session;
    const text = ui.text.value.trim();
    if (!s || !text || !s.channel || s.channel.readyState !== "open") return;
    s.channel.send(JSON.stringify({type: "text", text}));  // the server echoes it as a user transcript
    ui.text.value = "";
  });
  ui.video.addEventListener("click", () => ui.video.play().then(() => {
    if (ui.notice.dataset.reason === "autoplay") clearNotice();
  }).catch(() => {}));
  window.addEventListener("pagehide", () => { if (session) hangUp(session); });
  if (noMicrophoneApi()) {
    showNotice("needs-https", `${NEEDS_HTTPS} You can still type: press Start for a text-only conversation.`);
  }

  // For debugging in the console (and for the browser test): the live peer connection and events.
  window.avatarChat = {
    get pc() { return session ? session.pc : null; },
    get connected() { return !!session && !!session.pc && session.pc.connectionState === "connected"; },
    get render() { return session ? session.render : null; },
    get face() { return faceView.player; },  // render=browser: faces received and drawn
    // draw one face from FaceMotion values (the order of GET /v1/avatar's motion_fields)
    async drawFace(values) {
      const r = faceView.renderer || await loadFace();
      r.draw(r.motionFromList(values));
      return ui.face.toDataURL("image/png");
    },
    events,
  };
})();

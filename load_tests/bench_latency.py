"""Conversation latency over WebRTC, measured at the client: voice-to-voice, interruption, the
audio/video offset of what is received, and the server's per-stage breakdown.

    python -m load_tests.bench_latency [--server URL] [--rounds 3] [--no-interrupt]
                                       [--render browser] [--json out.json] [--png out.png]

Each round connects one session with the Python client (avatarchat/client/avatar_client.py, loopback only) and
speaks each input into its microphone in real time: a real human recording (beckett.wav from
moonshine-voice) and questions spoken by the TTS (load_tests/bench_turn.inputs). After each it waits
for the reply to finish (the avatar's final transcript, state "listening", the received audio quiet).
Then, unless --no-interrupt, one barge-in trial: a typed request for a long reply; once the avatar
has been audible for ~1 s, a spoken question interrupts it; the answer to that question is waited
for and measured too.

Measured (client monotonic clock; audio judged in 10 ms windows, sounding when RMS > --threshold):

- voice_to_voice_s: from the end of the user's audio (the send time of the last sample of its last
  sounding window, from Microphone.sent_at) to the first sounding window of received avatar audio
  after it (a received piece's arrival time is that of its last sample). beckett.wav has ~0.7 s
  pauses between six phrases; the server may treat it as several utterances (merged while the avatar
  has not started speaking; a reply already speaking is cut when the user speaks on). It is measured
  from the end of the *whole* recording. A row where the avatar spoke while the input played says so
  (spoke_before_end_of_input); one where it was audible in the input's last 0.3 s
  (audible_at_end_of_input: talking over the end of the input) is left out of the voice-to-voice
  summary.
- interruption_s: from the first sounding sample of the barge-in audio as sent to the start of the
  first silence in the received audio after it (a run of silent windows of >= 100 ms that also lasts
  >= 0.5 s, so a pause between sentences is not taken for the stop). server_cancel_seen_s: from the
  same start to the first "state" event after it, as received over the data channel: the server's
  decision to cancel the reply (avatarchat/conversation/barge_in.py pauses the audio at the first voiced chunk and
  cancels once the voice has lasted min_speech_s, so this is expected to come after the silence).
  A trial where the long reply finished by itself first (interrupted: false) has neither.
- av_offset_s: per round, the lag of the mouth's movement (mouth-box crops of the received video;
  with --render browser the received mouth_open values) behind the received audio envelope, by
  cross-correlation (load_tests/measures/lipsync.py); positive: the mouth is late. av_correlation is the
  lip-sync score: how well the mouth follows the sound's energy at that lag. Since 2026-11-27 both
  signals are high-passed (less their 1 s moving average) before correlating, so the head's idle
  sway no longer counts against the score; scores recorded before that are unfiltered.
- server.*: every numeric field of the server's "timings" event for the turn that answered (the last
  one received for that input), as the server sends it.

Without --server it starts its own loopback cluster with serve_config.yaml (host candidates
127.0.0.1 only). Prints JSON (medians, p95, per-turn rows, machine); --png draws the breakdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from load_tests.measures.latency import THRESHOLD, received_windows, silence_onset, sound_onset, sound_span
from load_tests.measures.lipsync import lip_sync
from avatarchat.local_cluster import ROOT
from load_tests.conversation import STORY, is_reply_done, is_user, state_events, wait_answered, wait_sent

LOOPBACK = ["127.0.0.1"]
BARGE_IN = "Wait. What is your name?"
SERVER_STAGES = ("asr", "llm_first_token", "tts_first_audio", "avatar_first_frame", "input_to_first_frame")
NOT_SUMMARISED = {"session_turn"}
TALK_OVER_S = 0.3  # avatar audio in this last stretch of an input: it was talking over the input


def server_timings(client, start: int, end: int | None = None) -> tuple[dict, int]:
    """The numeric fields of the last timings event in events[start:end], and how many came."""
    found = [e for e in client.received.events[start:end] if e.get("type") == "timings"]
    if not found:
        return {}, 0
    return ({k: v for k, v in found[-1].items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            len(found))


# -- one input, one barge-in -----------------------------------------------------------------------

async def speak(client, label: str, samples: np.ndarray, rate: int, threshold: float) -> dict:
    """Speak one input, wait for its answer, and measure voice-to-voice."""
    mark, amark = len(client.received.events), len(client.received.audio)
    spoken_s = client.say(samples, rate)
    play = len(client.mic.plays) - 1
    first, end = sound_span(samples, rate, threshold)
    start_t = await wait_sent(client.mic, first, rate, play)
    end_t = await wait_sent(client.mic, end - 1, rate, play) + 1 / rate  # end of the last sounding sample
    await wait_answered(client, mark, threshold)
    r = client.received
    rms, times = received_windows(r.audio[amark:], r.audio_times[amark:])
    onset = sound_onset(rms, times, end_t, threshold)
    early = sound_onset(rms, times, start_t, threshold)
    talking_over = sound_onset(rms, times, end_t - TALK_OVER_S, threshold)
    fields, n = server_timings(client, mark)
    users = [e["text"] for e in r.events[mark:] if is_user(e)]
    return {"input": label, "kind": "utterance", "spoken_s": round(spoken_s, 3),
            "voice_to_voice_s": None if onset is None else round(onset - end_t, 4),
            "spoke_before_end_of_input": early is not None and early < end_t,
            "audible_at_end_of_input": talking_over is not None and talking_over < end_t,
            "server_turns": n, "user_transcripts": len(users), "server": fields}


async def barge_in(client, barge: tuple[str, np.ndarray, int], threshold: float) -> list[dict]:
    """Ask for a long reply, interrupt it by voice once it has been audible ~1 s, measure the stop,
    then wait for and measure the answer to the interrupting question."""
    r = client.received
    mark, amark = len(r.events), len(r.audio)
    sent_at = time.monotonic()
    client.send_text(STORY)
    deadline = sent_at + 120
    while True:
        await asyncio.sleep(0.05)
        rms, times = received_windows(r.audio[amark:], r.audio_times[amark:])
        onset = sound_onset(rms, times, sent_at, threshold)
        if onset is not None and r.audio_times and r.audio_times[-1] - onset >= 1.0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the long reply never became audible")
    label, samples, rate = barge
    bmark = len(r.events)
    spoken_s = client.say(samples, rate)
    play = len(client.mic.plays) - 1
    first, end = sound_span(samples, rate, threshold)
    start_t = await wait_sent(client.mic, first, rate, play)
    end_t = await wait_sent(client.mic, end - 1, rate, play) + 1 / rate
    await wait_answered(client, bmark, threshold)

    rms, times = received_windows(r.audio[amark:], r.audio_times[amark:])
    stop = silence_onset(rms, times, start_t, threshold)
    states = [(s, t) for s, t in state_events(client, bmark) if t >= start_t]
    # the long reply was cut if no avatar final transcript came before the barge-in's user transcript
    user = next((i for i in range(bmark, len(r.events)) if is_user(r.events[i])), len(r.events))
    finished = any(is_reply_done(e) for e in r.events[mark:user])
    story_fields, _ = server_timings(client, mark, user)
    stop_row = {"input": f"'{STORY}' (typed) cut by {label}", "kind": "interruption",
                "spoken_s": round(spoken_s, 3), "interrupted": not finished,
                "story_audible_before_barge_in_s": round(start_t - onset, 3),
                "interruption_s": None if stop is None or finished else round(stop - start_t, 4),
                "server_cancel_seen_s": round(states[0][1] - start_t, 4) if states and not finished else None,
                "server_onset_to_silence_s": next((e.get("speech_onset_to_silence") for e in r.events[bmark:]
                                                   if e.get("type") == "interruption"), None),
                "server": story_fields, "stopped_at": stop}
    after = sound_onset(rms, times, end_t, threshold)
    fields, n = server_timings(client, user)
    answer_row = {"input": label, "kind": "barge-in answer", "spoken_s": round(spoken_s, 3),
                  "voice_to_voice_s": None if after is None else round(after - end_t, 4),
                  "spoke_before_end_of_input": False, "audible_at_end_of_input": False,
                  "server_turns": n, "server": fields}
    return [stop_row, answer_row]


async def one_round(server: str, round_no: int, cases, barge, threshold: float, interrupt: bool,
                    render: str | None = None) -> dict:
    from avatarchat.avatar.pack import AvatarPack
    from avatarchat.client.avatar_client import AvatarClient

    client = AvatarClient(server, host_addresses=LOOPBACK, keep_frames=12000,
                          mouth_box=AvatarPack.load("astronaut").regions["mouth_box"], render=render)
    await client.connect()
    rows: list[dict] = []
    try:
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 10)
        await asyncio.sleep(1.5)  # idle face first: the lip-sync measure takes its rest mouth from it
        for label, samples, rate in cases:
            rows.append(await speak(client, label, samples, rate, threshold))
            print(f"  round {round_no}: {json.dumps(rows[-1])}", file=sys.stderr)
        if interrupt:
            rows += await barge_in(client, barge, threshold)
            for row in rows[-2:]:
                print(f"  round {round_no}: {json.dumps(row)}", file=sys.stderr)
        lag = corr = after_lag = None
        try:
            lag, corr = lip_sync(client.received)
            stopped = [r.pop("stopped_at", None) for r in rows if r.get("kind") == "interruption"]
            if stopped and stopped[-1] is not None:
                # the reply that follows an interruption: sync must hold from its first frame
                after_lag, _ = lip_sync(client.received, since=stopped[-1] + 0.3)
        except (ValueError, IndexError) as e:
            print(f"  round {round_no}: no A/V offset: {e!r}", file=sys.stderr)
        for row in rows:
            row["round"] = round_no
        return {"round": round_no, "rows": rows, "connect_s": round(client.connect_s, 3),
                "av_offset_s": lag, "av_correlation": None if corr is None else round(corr, 3),
                "av_offset_after_interruption_s": after_lag,
                "video_fps": round(client.received.fps(), 2)}
    finally:
        await client.close()


# -- summary, plot, main ----------------------------------------------------------------------------------

def stat(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 4), "p95": round(float(np.percentile(values, 95)), 4),
            "n": len(values)}


def summarise(rounds: list[dict]) -> dict:
    rows = [row for r in rounds for row in r["rows"]]
    answered = [row for row in rows if row["kind"] != "interruption"]
    v2v = [row for row in answered if not row["audible_at_end_of_input"]]
    out = {"voice_to_voice_s": stat([row["voice_to_voice_s"] for row in v2v]),
           "voice_to_voice_s_by_input": {label: stat([row["voice_to_voice_s"] for row in v2v if row["input"] == label])
                                         for label in dict.fromkeys(row["input"] for row in v2v)},
           "interruption_s": stat([row.get("interruption_s") for row in rows if row["kind"] == "interruption"]),
           "server_cancel_seen_s": stat([row.get("server_cancel_seen_s") for row in rows
                                         if row["kind"] == "interruption"]),
           "interrupted": sum(1 for row in rows if row.get("interrupted")),
           "interruption_trials": sum(1 for row in rows if row["kind"] == "interruption"),
           "av_offset_s": stat([r["av_offset_s"] for r in rounds]),
           "av_correlation": stat([r["av_correlation"] for r in rounds]),
           "av_offset_after_interruption_s": stat([r["av_offset_after_interruption_s"] for r in rounds])}
    keys = dict.fromkeys(k for row in answered for k in row["server"] if k not in NOT_SUMMARISED)
    out["server"] = {k: stat([row["server"].get(k) for row in answered]) for k in keys}
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    server = summary.get("server", {})

    def med(d, key):
        return ((d or {}).get(key) or {}).get("median", 0.0)

    parts = [("asr", "ASR", "#4C72B0"), ("llm_first_token", "LLM first token", "#DD8452"),
             (None, "LLM to end of first chunk, hops", "#CCCCCC"),
             ("tts_first_audio", "TTS first audio", "#55A868"), ("avatar_first_frame", "avatar first frame", "#C44E52")]
    total = med(server, "input_to_first_frame")
    v2v = med(summary, "voice_to_voice_s")
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    left = 0.0
    stages = {k: med(server, k) for k, _, _ in parts if k}
    for key, label, colour in parts:
        v = stages[key] if key else max(0.0, total - sum(stages.values()))
        ax.barh(2, v, left=left, color=colour, label=label)
        left += v
    p95 = (server.get("input_to_first_frame") or {}).get("p95", 0.0)
    ax.text(left + 0.02, 2, f"median {total:.2f} s, p95 {p95:.2f} s", va="center", fontsize=8)
    # the client's voice-to-voice: the end-of-turn decision (when the server reports it), the
    # server's turn to its first frame, and the rest (transport, jitter buffer, playout lead)
    eot = med(server, "end_of_turn_decision")
    left1 = 0.0
    for v, label, colour in ((eot, "end-of-turn decision (server)", "#937860"),
                             (total, "turn start to first frame (server)", "#8172B2"),
                             (max(0.0, v2v - eot - total),
                              "rest: transport, buffers, playout" if eot else
                              "rest: end-of-turn wait, transport, buffers, playout", "#E5AE38")):
        if v:
            ax.barh(1, v, left=left1, color=colour, label=label)
            left1 += v
    s = summary.get("voice_to_voice_s") or {}
    ax.text(max(v2v, left1) + 0.02, 1, f"median {v2v:.2f} s, p95 {s.get('p95', 0.0):.2f} s", va="center", fontsize=8)
    i = summary.get("interruption_s") or {}
    ax.barh(0, i.get("median", 0.0), color="#64B5CD", label="barge-in start to avatar silent")
    ax.text(i.get("median", 0.0) + 0.02, 0, f"median {i.get('median', 0.0):.2f} s, p95 {i.get('p95', 0.0):.2f} s",
            va="center", fontsize=8)
    ax.set_yticks([0, 1, 2], ["interruption\n(client)", "voice-to-voice\n(client)", "server stages\n(timings events)"])
    ax.set_xlim(0, max(left, left1, v2v, i.get("median", 0.0), 0.1) * 1.45)
    ax.set_xlabel("seconds (medians)")
    ax.set_title("Conversation latency over WebRTC, measured at the client")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def barge_in_input(config) -> tuple[str, np.ndarray, int]:
    from avatarchat.backends.base import create_backend

    tts = create_backend(config.stage("tts"))

    async def say():
        return np.concatenate([a.samples async for a in tts.synthesize(BARGE_IN)])

    pad = np.zeros(tts.sample_rate // 4, np.float32)
    return f"'{BARGE_IN}' (tts)", np.concatenate([pad, asyncio.run(say()), pad]), tts.sample_rate


def main() -> int:
    from avatarchat.config import load_serve_config
    from avatarchat.local_cluster import ServeCluster
    from load_tests.bench_sessions import cluster_config
    from load_tests.bench_turn import inputs
    from load_tests.report import emit, machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="a running service; default: start one")
    parser.add_argument("--config", default=str(ROOT / "serve_config.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-interrupt", action="store_true", help="skip the barge-in trial")
    parser.add_argument("--threshold", type=float, default=THRESHOLD,
                        help="RMS of a 10 ms window above which audio counts as sound")
    parser.add_argument("--render", choices=["server", "browser"], default=None,
                        help="the session's render mode (browser: lip sync from the motion packets)")
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--png", help="draw the breakdown here")
    args = parser.parse_args()
    config = load_serve_config(args.config)
    cases = inputs(config)
    barge = barge_in_input(config)

    # SIGTERM (and SIGINT, which a shell's background job ignores) end the run through the
    # finally below, so the cluster this started is stopped with it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cluster = None
    if not args.server:
        cluster = ServeCluster(cluster_config(Path(args.config), max_sessions=2)).start()
    rounds = []
    try:
        url = args.server or cluster.url
        for r in range(args.rounds):
            rounds.append(asyncio.run(one_round(url, r, cases, barge, args.threshold, not args.no_interrupt,
                                                args.render)))
    finally:
        if cluster:
            cluster.stop()
    summary = summarise(rounds)
    report = {"benchmark": "conversation latency over WebRTC, measured at the client", "machine": machine(),
              "rounds": args.rounds, "threshold_rms": args.threshold, "render": args.render or "server",
              "inputs": [c[0] for c in cases], "barge_in": None if args.no_interrupt else
              {"long_reply_request": STORY, "utterance": barge[0]},
              "summary": summary,
              "sessions": [{k: v for k, v in r.items() if k != "rows"} for r in rounds],
              "turns": [row for r in rounds for row in r["rows"]]}
    emit(report, args.json)
    if args.png:
        plot(summary, Path(args.png))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One simulated user's conversation over a real WebRTC session, and the checks on every turn.

What the Locust users (load_tests/locustfile.py) and the soak (load_tests/soak.py) run per user, with
the project's Python client (avatarchat/client/avatar_client.py): open a session, speak recorded utterances into
the microphone in real time, wait for the whole reply (audio and video), optionally talk over a long
reply, hang up. Each step returns what it measured and, for a turn, why it failed if it did:

- the reply never came (no final avatar transcript, or the avatar never went quiet) in ``timeout_s``;
- the user transcript does not match what this user said, or matches another user's utterance
  better (the session heard someone else's audio);
- the reply had no sounding audio, or more sounding audio arrived than the reply itself lasted, or
  audio sounded while this session's avatar had nothing to say (another session's audio in ours).

Times are the client's monotonic clock; audio is judged in 10 ms windows (load_tests/measures/latency.py).
"""

from __future__ import annotations

import asyncio
import difflib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from load_tests.measures.latency import THRESHOLD, WINDOW_S, received_windows, silence_onset, sound_onset, sound_span

QUESTIONS = ("What is your name?", "What colour is the sky?", "Can you tell me a joke?",
             "How are you today?", "Where do you live?", "What is your favourite food?")
STORY = "Tell me a long story about a dragon."
MATCH = 0.6  # word-level similarity a user transcript needs to count as this user's utterance


@dataclass(frozen=True)
class Utterance:
    text: str
    samples: np.ndarray
    rate: int


def spoken_questions(config_path: Path | None = None, questions=QUESTIONS) -> list[Utterance]:
    """``questions`` spoken by the configured TTS, with half a second of silence either side as a
    recording would have. (Real speech synthesised once per process; nothing is downloaded.)"""
    from avatarchat.backends.base import create_backend
    from avatarchat.config import load_serve_config
    from avatarchat.local_cluster import ROOT

    tts = create_backend(load_serve_config(config_path or ROOT / "serve_config.yaml").stage("tts"))

    async def speak(text: str) -> np.ndarray:
        return np.concatenate([a.samples async for a in tts.synthesize(text)])

    pad = np.zeros(tts.sample_rate // 2, np.float32)
    return [Utterance(q, np.concatenate([pad, asyncio.run(speak(q)), pad]), tts.sample_rate)
            for q in questions]


# -- judging a turn (pure) ---------------------------------------------------------------------------

def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, words(a), words(b)).ratio()


@dataclass
class TurnEvidence:
    """What a turn left at the client, reduced to what the checks need."""
    said: str                      # this user's utterance
    others: list[str]              # the other users' utterances (for "heard someone else")
    heard: str | None              # the session's user transcript(s) for the turn, joined
    reply_audio_s: float | None    # the reply's length as the server announced it (final transcript)
    sounding_s: float              # sounding audio received from the end of the user's speech on
    idle_sounding_s: float         # sounding audio received while this avatar had nothing to say


def judge_turn(e: TurnEvidence) -> str | None:
    """Why the turn failed, or None when it is complete and this session's own."""
    if e.heard is None:
        return "no user transcript"
    own = similarity(e.heard, e.said)
    if own < MATCH:
        return f"transcript {e.heard!r} does not match the utterance {e.said!r} ({own:.2f})"
    better = [o for o in e.others if o != e.said and similarity(e.heard, o) > own]
    if better:
        return f"transcript {e.heard!r} matches another user's utterance {better[0]!r}"
    if e.reply_audio_s is None:
        return "no complete reply"
    if e.sounding_s < 0.2:
        return "the reply had no sounding audio"
    if e.sounding_s > e.reply_audio_s + 1.0:
        return (f"{e.sounding_s:.1f} s of reply audio arrived for a {e.reply_audio_s:.1f} s reply "
                "(someone else's audio)")
    if e.idle_sounding_s > 0.2:
        return f"{e.idle_sounding_s:.1f} s of sounding audio arrived while the avatar was idle"
    return None


def sounding_seconds(rms: np.ndarray, times: np.ndarray, start: float, end: float,
                     threshold: float = THRESHOLD) -> float:
    return float(((times >= start) & (times < end) & (rms > threshold)).sum() * WINDOW_S)


def frame_rate(times: list[float], start: float, end: float) -> float | None:
    t = [x for x in times if start <= x <= end]
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) >= 3 and t[-1] > t[0] else None


# -- waiting on the client ---------------------------------------------------------------------------

def is_user(e: dict) -> bool:
    return e.get("type") == "transcript" and e.get("role") == "user"


def is_reply_done(e: dict) -> bool:
    return e.get("type") == "transcript" and e.get("role") == "avatar" and bool(e.get("final"))


def state_events(client, start: int = 0) -> list[tuple[str, float]]:
    r = client.received
    return [(e["state"], t) for e, t in zip(r.events[start:], r.event_times[start:]) if e.get("type") == "state"]


def last_index(events: list[dict], pred, start: int = 0) -> int | None:
    for i in range(len(events) - 1, start - 1, -1):
        if pred(events[i]):
            return i
    return None


def audio_quiet_since(client, seconds: float, threshold: float) -> bool:
    r, now = client.received, time.monotonic()
    recent = [a for a, t in zip(r.audio[-100:], r.audio_times[-100:]) if t >= now - seconds]
    return bool(recent) and all(np.sqrt(np.mean(a ** 2)) <= threshold for a in recent)


async def wait_answered(client, mark: int, threshold: float = THRESHOLD, timeout_s: float = 180.0) -> None:
    """Until the input spoken after event index ``mark`` is answered and the avatar is done: the
    microphone has finished, a user transcript came and an avatar final transcript after the last
    one, the state has been "listening" for 1 s and the received audio quiet for 0.5 s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        events = client.received.events
        if client.mic.playing:
            continue
        user = last_index(events, is_user, mark)
        if user is None or last_index(events, is_reply_done, user) is None:
            continue
        states = state_events(client, mark)
        if not states or states[-1][0] != "listening" or time.monotonic() - states[-1][1] < 1.0:
            continue
        if audio_quiet_since(client, 0.5, threshold):
            return
    raise TimeoutError(f"no finished answer in {timeout_s} s; events {client.received.events[mark:][-8:]}")


async def wait_sent(mic, sample: int, rate: int, play: int, timeout_s: float = 60.0) -> float:
    deadline = time.monotonic() + timeout_s
    while (t := mic.sent_at(sample, rate, play)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the microphone did not send the utterance")
        await asyncio.sleep(0.02)
    return t


# -- the conversation ----------------------------------------------------------------------------------

@dataclass
class TurnResult:
    said: str
    error: str | None = None
    voice_to_voice_s: float | None = None
    video_fps: float | None = None
    interruption_s: float | None = None   # barge-in turns: voice onset to the avatar's silence


@dataclass
class Conversation:
    """One user: ``open()``, then ``turn()`` / ``barge_in()`` as often as wanted, then ``close()``."""
    server: str
    utterances: list[Utterance]          # every user's utterances (this one's are passed to turn())
    host_addresses: list[str] | None = None
    timeout_s: float = 120.0
    render: str | None = None            # None: the server's default; "browser": motion, no video
    threshold: float = THRESHOLD
    client: object = field(init=False, default=None)
    _idle_from: float = field(init=False, default=0.0)

    async def open(self) -> float:
        """Connect; returns seconds from the offer to the first face received (a video frame, or
        a motion packet in render=browser)."""
        from avatarchat.client.avatar_client import AvatarClient

        self.client = AvatarClient(self.server, host_addresses=self.host_addresses, keep_frames=0,
                                   timeout_s=min(self.timeout_s, 30.0), render=self.render)
        t0 = time.monotonic()
        await self.client.connect()
        deadline = t0 + self.timeout_s
        r = self.client.received
        while not (r.video_times or r.motions):
            if time.monotonic() > deadline:
                raise TimeoutError("no video frame or face motion after connecting")
            await asyncio.sleep(0.01)
        self._idle_from = time.monotonic()
        return (r.video_times[0] if r.video_times else r.motions[0][0]) - t0

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    def _others(self) -> list[str]:
        return [u.text for u in self.utterances]

    async def turn(self, utt: Utterance) -> TurnResult:
        c, r = self.client, self.client.received
        mark, amark = len(r.events), len(r.audio)
        c.say(utt.samples, utt.rate)
        play = len(c.mic.plays) - 1
        span = sound_span(utt.samples, utt.rate, self.threshold)
        result = TurnResult(utt.text)
        try:
            end_t = await wait_sent(c.mic, span[1] - 1, utt.rate, play, self.timeout_s) + 1 / utt.rate
            await wait_answered(c, mark, self.threshold, self.timeout_s)
        except TimeoutError as e:
            result.error = f"no reply: {e}"
            return result
        result.voice_to_voice_s, result.video_fps, result.error = self._judge(utt, mark, amark, end_t)
        return result

    def _judge(self, utt: Utterance, mark: int, amark: int, end_t: float, reply_from: float | None = None):
        """(voice to voice, fps while speaking, error). The reply is the audio from ``reply_from``
        (default: the end of the user's speech) on."""
        r = self.client.received
        events = r.events[mark:]
        rms, times = received_windows(r.audio[amark:], r.audio_times[amark:])
        users = [e["text"] for e in events if is_user(e)]
        done = [e for e in events if is_reply_done(e)]
        reply_from = end_t if reply_from is None else reply_from
        onset = sound_onset(rms, times, reply_from, self.threshold)
        evidence = TurnEvidence(
            said=utt.text, others=self._others(), heard=" ".join(users) if users else None,
            reply_audio_s=sum(e.get("audio_s") or 0.0 for e in done) if done else None,
            sounding_s=sounding_seconds(rms, times, reply_from, np.inf, self.threshold),
            idle_sounding_s=sounding_seconds(rms, times, self._idle_from, end_t, self.threshold))
        self._idle_from = time.monotonic()
        speaking = [t for s, t in state_events(self.client, mark) if s == "speaking"]
        listening = [t for s, t in state_events(self.client, mark) if s == "listening"]
        fps = None
        if speaking and listening and listening[-1] > speaking[0]:
            faces = r.video_times or [t for t, _, _ in r.motions]
            fps = frame_rate(faces, speaking[0], listening[-1])
        return (None if onset is None else onset - end_t), fps, judge_turn(evidence)

    async def ask(self, text: str) -> str | None:
        """A typed question, waited for until the whole reply has played: None, or what failed."""
        r = self.client.received
        mark = len(r.events)
        self.client.send_text(text)
        try:
            await wait_answered(self.client, mark, self.threshold, self.timeout_s)
        except TimeoutError as e:
            return f"no reply: {e}"
        done = [e for e in r.events[mark:] if is_reply_done(e)]
        return None if done and (done[-1].get("audio_s") or 0) > 0 else "a reply without audio"

    async def barge_in(self, utt: Utterance) -> TurnResult:
        """Ask (typed) for a long story; once it has sounded for ~1 s, speak ``utt`` over it. The
        story must stop and ``utt`` be answered like any turn."""
        c, r = self.client, self.client.received
        mark, amark = len(r.events), len(r.audio)
        asked = time.monotonic()
        c.send_text(STORY)
        result = TurnResult(utt.text)
        while True:
            await asyncio.sleep(0.05)
            rms, times = received_windows(r.audio[amark:], r.audio_times[amark:])
            onset = sound_onset(rms, times, asked, self.threshold)
            # talk over it once it has sounded for 1 s, and while it sounds (not in a pause)
            if onset is not None and r.audio_times[-1] - onset >= 1.0 and (rms[-5:] > self.threshold).all():
                break
            if time.monotonic() - asked > self.timeout_s:
                result.error = "the story never became audible"
                return result
        bmark, bamark = len(r.events), len(r.audio)
        c.say(utt.samples, utt.rate)
        play = len(c.mic.plays) - 1
        first, end = sound_span(utt.samples, utt.rate, self.threshold)
        try:
            start_t = await wait_sent(c.mic, first, utt.rate, play, self.timeout_s)
            end_t = await wait_sent(c.mic, end - 1, utt.rate, play, self.timeout_s) + 1 / utt.rate
            await wait_answered(c, bmark, self.threshold, self.timeout_s)
        except TimeoutError as e:
            result.error = f"no reply after the barge-in: {e}"
            return result
        if not any(e.get("type") == "interruption" for e in r.events[mark:]):
            result.error = "talking over the story did not interrupt it"
            return result
        rms, times = received_windows(r.audio[amark:], r.audio_times[amark:])
        # a held silence of 1 s: longer than the TTS's pauses between sentences (~0.75 s)
        stop = silence_onset(rms, times, start_t, self.threshold, hold_s=1.0)
        result.interruption_s = None if stop is None else stop - start_t
        # The answer is what sounds after both the end of the barge-in and the story's stop (a
        # short question can end before the story has gone quiet); the story's audio is ours too.
        self._idle_from = end_t
        after = end_t if stop is None else max(end_t, stop)
        result.voice_to_voice_s, result.video_fps, result.error = self._judge(utt, bmark, bamark, end_t, after)
        return result

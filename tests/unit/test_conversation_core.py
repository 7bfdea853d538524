"""The conversation core on virtual time: scripted stages whose time passes on a VirtualClock, a
scripted microphone (one VAD probability per 32 ms chunk), and an ear that plays the playout 20 ms
at a time off the same clock. No WebRTC, no real sleeps: each timeline of seconds runs in
milliseconds, and every time in it is exact."""

import asyncio
import math

import numpy as np
import pytest

from avatarchat.backends.base import create_backend
from avatarchat.config import Limits, Pacing, parse_stage
from avatarchat.conversation.core import Conversation
from avatarchat.conversation.outbox import ReplyOutbox
from avatarchat.conversation.states import ConversationState as S
from avatarchat.conversation.states import ConversationStates, IllegalTransition
from avatarchat.end_of_turn import EndOfTurn
from avatarchat.events import ReplyDone, StateChanged
from avatarchat.messages import AudioChunk, AvatarChunk, TextDelta, Transcript, TurnTimings
from avatarchat.pacing import VirtualClock, deadline
from avatarchat.ports import LocalPorts
from avatarchat.conversation.playout import AUDIO_FRAME_S

pytestmark = pytest.mark.timeout(20)

RATE, CHUNK = 16000, 512
CHUNK_S = CHUNK / RATE  # 32 ms
QUIET, VOICE = 0.02, 0.9  # VAD probabilities
SENTENCE_S = 0.06         # scripted TTS: seconds of audio per character
STORY = " ".join(f"Sentence number {i} of a long story goes on here." for i in range(1, 9))
COUNT = "One two three four five six. Seven eight nine ten eleven twelve."
# The scripted stages' times on the virtual clock: the first reply audio comes LLM + TTS after a
# typed question, ASR + LLM + TTS after a spoken one.
ASR_S, LLM_S, TTS_S = 0.1, 0.2, 0.05


def backend(stage: str, **options):
    return create_backend(parse_stage("test", stage, {"backend": "scripted", **options}))


class TimedPorts:
    """The scripted stages with no delays of their own; their time passes on the virtual clock."""

    speech_to_speech = captions_from_asr = False  # a cascade

    def __init__(self, clock: VirtualClock, reply: str = COUNT, transcript: str = "Hello there.",
                 llm_s: float = LLM_S):
        self.clock, self.llm_s = clock, llm_s
        self.llm = backend("llm", reply=reply, first_token_delay_s=0, token_delay_s=0)
        self.local = LocalPorts(backend("asr", text=transcript, delay_s=0), self.llm,
                                backend("tts", delay_s=0), backend("avatar"))
        self.utterances: list[AudioChunk] = []  # what the ASR was asked to transcribe
        self.requests = []                       # what the LLM was asked
        self.spoken: list[str] = []              # the sentences the TTS was asked to say

    async def transcribe(self, audio):
        self.utterances.append(audio)
        await self.clock.sleep(ASR_S)
        return await self.local.transcribe(audio)

    async def generate(self, request):
        self.requests.append(request)
        await self.clock.sleep(self.llm_s)
        async for delta in self.local.generate(request):
            yield delta

    async def synthesize(self, text, language=None):
        self.spoken.append(text)
        await self.clock.sleep(TTS_S)
        async for audio in self.local.synthesize(text, language):
            yield audio

    def animate(self, request):
        return self.local.animate(request)


class Talk:
    """One conversation, its microphone, its ear, and everything it sent."""

    def __init__(self, clock: VirtualClock, ports: TimedPorts, **limits):
        self.clock, self.ports = clock, ports
        self.sent: list[tuple[float, dict]] = []
        self.tasks: list[asyncio.Task] = []
        self.played: list[tuple[float, float]] = []  # (clock time, peak) of each 20 ms the ear heard
        self.conversation = Conversation(
            ports=ports, segmenter=EndOfTurn(sample_rate=RATE, chunk_samples=CHUNK, max_utterance_s=60),
            send=lambda event: self.sent.append((clock(), event)), fps=25,
            limits=Limits(**limits), pacing=Pacing(lead_s=0.6), clock=clock, spawn=self._spawn)
        self.playout = self.conversation.playout
        self.tasks.append(asyncio.get_running_loop().create_task(self._ear()))

    def _spawn(self, coro, name):
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def _ear(self):
        """What the audio track does: take the next 20 ms off the playout at its media time."""
        n = 0
        while True:
            await self.playout.clock.wait(n * AUDIO_FRAME_S)
            frame = self.playout.audio_frame(n * AUDIO_FRAME_S)
            self.played.append((self.clock(), float(np.abs(frame).max())))
            n += 1

    async def mic(self, seconds: float, probability: float) -> None:
        """Say (or not) for ``seconds``: each chunk is heard as it ends, as a track delivers it."""
        level = 0.2 if probability >= 0.5 else 0.0
        for _ in range(round(seconds / CHUNK_S)):
            await self.clock.advance(CHUNK_S)
            await self.conversation.hear(probability, np.full(CHUNK, level, np.float32))

    async def quiet(self, seconds: float) -> None:
        await self.mic(seconds, QUIET)

    async def voice(self, seconds: float) -> None:
        await self.mic(seconds, VOICE)

    async def close(self) -> None:
        self.conversation.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    # -- what was sent ---------------------------------------------------------------------------
    def events(self, kind: str, **match) -> list[dict]:
        return [e for _, e in self.sent if e["type"] == kind and all(e.get(k) == v for k, v in match.items())]

    def at(self, kind: str, **match) -> list[float]:
        return [t for t, e in self.sent if e["type"] == kind and all(e.get(k) == v for k, v in match.items())]

    def states(self) -> list[str]:
        return [e["state"] for e in self.events("state")]

    def sounding_s(self, t0: float = 0.0, t1: float = float("inf")) -> float:
        return sum(AUDIO_FRAME_S for t, peak in self.played if t0 <= t < t1 and peak > 1e-4)

    def history(self) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.conversation.history]


@pytest.fixture
async def talk():
    made = []

    def make(reply: str = COUNT, transcript: str = "Hello there.", llm_s: float = LLM_S, **limits):
        clock = VirtualClock()
        made.append(Talk(clock, TimedPorts(clock, reply, transcript, llm_s), **limits))
        return made[-1]

    yield make
    for t in made:
        await t.close()
        assert all(task.done() for task in t.tasks)


def frames_between(t0: float, t1: float) -> list[float]:
    """The ear's 20 ms frame times in (t0, t1]."""
    first, last = math.floor(t0 / AUDIO_FRAME_S) + 1, math.floor(t1 / AUDIO_FRAME_S + 1e-9)
    return [k * AUDIO_FRAME_S for k in range(first, last + 1)]


# -- a plain turn --------------------------------------------------------------------------------

async def test_a_typed_question_is_answered_and_the_client_follows_the_states(talk):
    t = talk()
    conversation = t.conversation
    conversation.submit("What is your name?")
    assert conversation.state is S.THINKING and t.states() == ["thinking"]
    await t.quiet(0.5)
    # the reply's first audio is released LLM + TTS after the question, heard at the next 20 ms
    assert t.at("state", state="speaking") == [pytest.approx(LLM_S + TTS_S)]
    assert conversation.state is S.SPEAKING
    reply_s = (len(COUNT) - 1) * SENTENCE_S  # its two sentences, without the space between them
    await t.quiet(reply_s + 0.5)
    done = t.events("transcript", role="avatar", final=True)
    assert [e["text"] for e in done] == [COUNT]
    # "listening" comes as the reply is complete: lead_s (0.6) before its sound ends
    end_of_sound = LLM_S + TTS_S + 0.01 + reply_s
    assert t.at("state", state="listening") == [pytest.approx(end_of_sound - 0.6, abs=0.021)]
    assert t.states() == ["thinking", "speaking", "listening"]
    assert conversation.state is S.LISTENING and not t.playout.speaking
    assert t.sounding_s() == pytest.approx(reply_s, abs=0.021)
    assert t.history() == [("user", "What is your name?"), ("assistant", COUNT)]
    timings = t.events("timings")[0]
    assert timings["text_to_voice"] == pytest.approx(LLM_S + TTS_S + 0.01)  # the ear's next frame
    assert timings["session_turn"] == 1.0 and "voice_to_voice" not in timings


async def test_a_spoken_question_is_measured_from_the_end_of_the_speech(talk):
    t = talk(transcript="What is your name?")
    await t.quiet(0.32)
    await t.voice(0.8)
    assert t.conversation.state is S.USER_SPEAKING and t.states() == []
    await t.quiet(5.0)
    # VAD-only end of turn: 600 ms of silence (19 chunks) decide it
    assert t.at("state", state="thinking") == [pytest.approx(1.12 + 0.608)]
    assert [e["text"] for e in t.events("transcript", role="user")] == ["What is your name?"]
    [utterance] = t.ports.utterances  # from pre_roll_ms before the speech to post_roll_ms after
    assert utterance.start == pytest.approx(0.12) and utterance.duration == pytest.approx(1.2)
    [timings] = t.events("timings")
    assert timings["end_of_turn_decision"] == pytest.approx(0.608)
    # the first reply audio is released ASR + LLM + TTS after the decision, heard at the next 20 ms
    assert t.playout.first_audio_at == pytest.approx(1.728 + ASR_S + LLM_S + TTS_S, abs=AUDIO_FRAME_S)
    assert timings["voice_to_voice"] == pytest.approx(t.playout.first_audio_at - 1.12)
    assert timings["voice_to_voice"] == pytest.approx(2.08 - 1.12)
    assert t.states() == ["thinking", "speaking", "listening"]


# -- barge-in --------------------------------------------------------------------------------------

FIRST_SENTENCE = "Sentence number 1 of a long story goes on here."


async def test_voice_over_the_reply_pauses_it_at_once_and_cuts_it_after_min_speech(talk):
    t = talk(reply=STORY, transcript="Stop please.")
    t.conversation.submit("Tell me a story.")
    await t.quiet(2.0)
    onset = t.clock()
    await t.voice(CHUNK_S)
    # paused at the first voiced chunk: nothing more is heard, nothing queued is lost yet
    assert t.conversation.state is S.PAUSED_BY_VOICE and t.playout.held and t.playout.queued_s > 0.3
    assert t.states() == ["thinking", "speaking"]  # a pause is not shown
    heard_before = t.sounding_s()
    await t.voice(8 * CHUNK_S)
    assert t.sounding_s() == heard_before and not t.events("interruption")
    await t.voice(CHUNK_S)  # the tenth voiced chunk: 320 ms >= min_speech_ms (300)
    [stop] = t.events("interruption")
    assert t.at("interruption") == [pytest.approx(onset + 0.32)]
    assert stop["cause"] == "voice"
    # the words of the sentence being played, as far as its audio played of what had been queued
    assert stop["heard_text"] == "Sentence number 1 of a long"
    # silent from the first 20 ms frame after the voiced chunk arrived
    silent_at = frames_between(onset + CHUNK_S, onset + 1)[0]
    assert stop["speech_onset_to_silence"] == pytest.approx(silent_at - onset)
    assert stop["speech_onset_to_silence"] <= CHUNK_S + AUDIO_FRAME_S
    # the queued audio and frames are gone, and the client is told the avatar listens
    assert not t.playout.speaking and t.playout.queued_s == 0
    assert t.conversation.state is S.USER_SPEAKING and t.states() == ["thinking", "speaking", "listening"]
    assert t.ports.spoken == [FIRST_SENTENCE]  # the story's next sentence is never synthesised
    await t.voice(0.5)
    await t.quiet(1.5)
    assert t.sounding_s(onset + CHUNK_S, onset + 1.7) == 0.0  # nothing of the old reply after the stop
    # the new utterance is answered on its own, with the heard part of the story in the history
    assert [e["text"] for e in t.events("transcript", role="user")] == ["Tell me a story.", "Stop please."]
    [utterance] = t.ports.utterances
    assert utterance.start == pytest.approx(onset - 0.2)  # its own speech, from pre_roll_ms before
    assert t.history()[:2] == [("user", "Tell me a story."), ("assistant", "Sentence number 1 of a long")]
    assert [(m.role, m.content) for m in t.ports.requests[-1].history] == [
        ("user", "Tell me a story."), ("assistant", "Sentence number 1 of a long"), ("user", "Stop please.")]
    assert t.states() == ["thinking", "speaking", "listening", "thinking", "speaking"]


async def test_a_cough_pauses_the_reply_and_it_goes_on_where_it_stopped(talk):
    t = talk(reply=COUNT)
    t.conversation.submit("Count for me.")
    await t.quiet(1.0)
    await t.voice(CHUNK_S)
    paused_at = t.clock()
    await t.voice(2 * CHUNK_S)  # 96 ms in all: shorter than min_speech_ms (300)
    assert t.conversation.state is S.PAUSED_BY_VOICE
    await t.quiet(6 * CHUNK_S)
    assert t.conversation.state is S.PAUSED_BY_VOICE
    await t.quiet(CHUNK_S)  # the seventh quiet chunk: resume_after_ms (200) of quiet
    resumed_at = t.clock()
    assert t.conversation.state is S.SPEAKING and not t.playout.held
    await t.quiet(6.0)
    assert not t.events("interruption")
    [done] = t.events("transcript", role="avatar", final=True)
    assert done["text"] == COUNT and t.states() == ["thinking", "speaking", "listening"]
    assert t.history() == [("user", "Count for me."), ("assistant", COUNT)]
    # nothing was lost: the whole reply was heard, around one gap as long as the pause
    assert t.sounding_s() == pytest.approx(done["audio_s"], abs=0.021)
    sounding = [at for at, peak in t.played if peak > 1e-4]
    gaps = [at for at, peak in t.played if sounding[0] < at < sounding[-1] and peak <= 1e-4]
    assert gaps == pytest.approx(frames_between(paused_at, resumed_at)) and len(gaps) == 14
    assert t.ports.utterances == []  # the cough was never a question
    assert t.conversation.state is S.LISTENING


async def test_speech_while_thinking_cuts_the_turn_and_both_parts_are_answered_together(talk):
    t = talk(transcript="What is the capital of France?", llm_s=0.5)
    await t.voice(0.8)  # "What is the capital..."
    await t.quiet(0.64 + 0.192)  # 600 ms of silence end it (at 1.408); its turn starts
    assert t.conversation.state is S.THINKING and len(t.ports.utterances) == 1
    first = t.ports.utterances[0]
    await t.voice(19 * CHUNK_S)  # "...of France?": the turn is cut once it is speech (start_ms, 96 ms)
    assert t.at("state", state="listening") == [pytest.approx(1.632 + 0.096)]
    assert t.conversation.state is S.USER_SPEAKING and t.ports.llm.tokens_generated == 0
    await t.quiet(5.0)
    # one question: the two parts as one utterance, and one answer
    assert len(t.ports.utterances) == 2
    merged = t.ports.utterances[1]
    assert merged.duration == pytest.approx(first.duration + 0.2 + 19 * CHUNK_S + 0.2)  # roll + speech + roll
    assert np.array_equal(merged.samples[:len(first.samples)], first.samples)
    assert [e["text"] for e in t.events("transcript", role="avatar", final=True)] == [COUNT]
    assert t.ports.llm.tokens_generated == len(COUNT.split())
    assert t.states() == ["thinking", "listening", "thinking", "speaking", "listening"]
    assert t.history() == [("user", "What is the capital of France?"), ("assistant", COUNT)]


async def test_voice_over_the_last_of_a_complete_reply_still_cuts_it(talk):
    """The turn reports the reply complete (the client hears "listening") lead_s before its sound
    ends; voice over that last part is still an interruption, and the history forgets the rest."""
    t = talk(reply=COUNT)
    t.conversation.submit("Count for me.")
    while not t.at("state", state="listening"):
        await t.quiet(CHUNK_S)
    assert t.conversation.state is S.FINISHING and t.playout.speaking
    assert t.history() == [("user", "Count for me."), ("assistant", COUNT)]  # complete: remembered
    await t.voice(10 * CHUNK_S)
    [stop] = t.events("interruption")
    assert stop["cause"] == "voice" and COUNT.startswith(stop["heard_text"])
    assert stop["heard_text"] == "One two three four five six. Seven eight nine ten"
    assert t.history() == [("user", "Count for me."), ("assistant", stop["heard_text"])]
    assert t.conversation.state is S.USER_SPEAKING and t.states() == ["thinking", "speaking", "listening"]


async def test_a_reply_played_to_its_end_leaves_the_conversation_listening(talk):
    t = talk(reply="Fine.")
    t.conversation.submit("How are you?")
    await t.quiet(0.5)
    assert t.conversation.state is S.FINISHING  # 0.3 s of reply: complete at once, still playing
    await t.quiet(0.5)
    assert t.conversation.state is S.LISTENING and not t.playout.speaking
    await t.voice(10 * CHUNK_S)  # voice now is a new utterance, not an interruption
    assert t.conversation.state is S.USER_SPEAKING and not t.events("interruption")


# -- what the history keeps ------------------------------------------------------------------------

async def test_an_interrupted_reply_is_remembered_as_far_as_heard_and_a_whole_one_whole(talk):
    t = talk(reply=STORY)
    t.conversation.submit("Tell me a story.")
    await t.quiet(1.5)
    t.conversation.interrupt("message")
    [stop] = t.events("interruption")
    heard = "Sentence number 1 of a long"
    assert stop == {"type": "interruption", "cause": "message", "heard_text": heard}
    assert t.history() == [("user", "Tell me a story."), ("assistant", heard)]
    assert t.conversation.state is S.LISTENING and t.states()[-1] == "listening"
    assert not t.events("transcript", role="avatar", final=True)
    await t.quiet(1.0)
    assert t.sounding_s(1.5 + AUDIO_FRAME_S) == 0.0

    t.ports.llm.options = t.ports.llm.options.model_copy(update={"reply": "Fine."})
    t.conversation.submit("Something short, then.")
    await t.quiet(2.0)
    assert t.ports.requests[-1].history[:2] == tuple(t.conversation.history[:2])
    assert t.history() == [("user", "Tell me a story."), ("assistant", heard),
                           ("user", "Something short, then."), ("assistant", "Fine.")]
    # a whole reply stays whole when the next turn starts (all of it was heard)
    t.conversation.submit("Thanks.")
    assert t.history()[-1] == ("assistant", "Fine.")


async def test_the_history_keeps_at_most_max_history_messages(talk):
    t = talk(reply="Fine.", max_history_messages=2)
    for question in ("One?", "Two?"):
        t.conversation.submit(question)
        await t.quiet(1.5)
    assert t.history() == [("user", "Two?"), ("assistant", "Fine.")]


# -- typed text, interrupt, timeout --------------------------------------------------------------------

async def test_typed_text_replaces_a_running_turn(talk):
    t = talk(reply=STORY)
    t.conversation.submit("Tell me a story.")
    await t.quiet(1.0)
    assert t.conversation.state is S.SPEAKING
    t.conversation.submit("No, a joke.")
    # cut at once, with no interruption event (the client asked for it)
    assert t.conversation.state is S.THINKING and not t.playout.speaking
    assert t.states() == ["thinking", "speaking", "thinking"]
    await t.quiet(0.6)
    assert not t.events("interruption")
    assert [e["text"] for e in t.events("transcript", role="user")] == ["Tell me a story.", "No, a joke."]
    assert [r.history[-1].content for r in t.ports.requests] == ["Tell me a story.", "No, a joke."]
    assert t.ports.requests[1].history[:2] == tuple(t.conversation.history[:2])
    assert t.history()[:2] == [("user", "Tell me a story."), ("assistant", "Sentence number 1 of a")]
    assert t.ports.spoken == [FIRST_SENTENCE, FIRST_SENTENCE]  # the first story stopped in its first sentence
    assert t.states() == ["thinking", "speaking", "thinking", "speaking"]
    assert t.conversation.turns == 2


async def test_an_interrupt_with_nothing_playing_cancels_the_thinking_turn_quietly(talk):
    t = talk(llm_s=1.0)
    t.conversation.submit("Hello?")
    await t.quiet(0.5)
    t.conversation.interrupt("message")
    assert not t.events("interruption")  # nothing was playing: nothing to report
    assert t.states() == ["thinking", "listening"] and t.conversation.state is S.LISTENING
    await t.quiet(2.0)
    assert t.ports.llm.tokens_generated == 0 and t.sounding_s() == 0.0 and t.history() == []


async def test_a_turn_over_its_timeout_fails_with_the_reason_and_goes_back_to_listening(talk):
    t = talk(llm_s=5.0, turn_timeout_s=1.0)
    t.conversation.submit("Hello?")
    await t.quiet(2.0)
    assert t.events("error") == [{"type": "error", "stage": "turn",
                                  "reason": "turn exceeded turn_timeout_s=1.0"}]
    assert t.at("error") == [pytest.approx(1.0)]
    assert t.states() == ["thinking", "listening"] and t.at("state", state="listening") == [pytest.approx(1.0)]
    assert t.conversation.state is S.LISTENING and t.ports.llm.tokens_generated == 0
    t.conversation.submit("Again?")  # the conversation carries on
    await t.quiet(0.2)
    assert t.conversation.state is S.THINKING


# -- the pieces ------------------------------------------------------------------------------------------

def test_the_state_machine_refuses_a_move_not_in_its_table_and_tells_the_client_only_changes():
    told = []
    states = ConversationStates(told.append)
    with pytest.raises(IllegalTransition, match="LISTENING -> SPEAKING"):
        states.go(S.SPEAKING)
    assert states.current is S.LISTENING and told == []
    for to in (S.USER_SPEAKING, S.THINKING, S.SPEAKING, S.PAUSED_BY_VOICE, S.SPEAKING, S.FINISHING,
               S.PAUSED_BY_VOICE, S.FINISHING, S.LISTENING):
        states.go(to)
    assert told == ["thinking", "speaking", "listening"]
    with pytest.raises(IllegalTransition, match="LISTENING -> PAUSED_BY_VOICE"):
        states.go(S.PAUSED_BY_VOICE)
    states.go(S.THINKING)
    with pytest.raises(IllegalTransition, match="THINKING -> FINISHING"):
        states.go(S.FINISHING)


async def test_an_interruption_drops_queued_events_by_their_type():
    outbox = ReplyOutbox(maxsize=8)
    audio = AudioChunk(np.zeros(160, np.float32), 16000)
    said = [Transcript("hi"), TextDelta("Hel"), StateChanged("speaking"), AvatarChunk(audio, (), 0, 25),
            TurnTimings(asr=0.1), ReplyDone("Hello.", 0.5)]
    for event in said:
        await outbox.put(event)
    kept = outbox.interrupt()
    assert kept == [said[0], said[2], said[4], said[5]]  # TextDelta and AvatarChunk are the reply's
    assert len(outbox) == 0
    outbox.finish()
    assert await outbox.get() is None


async def test_a_full_outbox_holds_its_producer_back():
    outbox = ReplyOutbox(maxsize=2)
    for text in ("a", "b"):
        await outbox.put(TextDelta(text))
    third = asyncio.ensure_future(outbox.put(TextDelta("c")))
    await asyncio.sleep(0)
    assert not third.done() and len(outbox) == 2
    assert await outbox.get() == TextDelta("a")
    await third
    assert [await outbox.get(), await outbox.get()] == [TextDelta("b"), TextDelta("c")]


async def test_the_virtual_clock_wakes_each_sleeper_at_its_time_and_times_out_on_it():
    clock = VirtualClock()
    woke = []

    async def sleeper(name, seconds):
        await clock.sleep(seconds)
        woke.append((name, clock()))

    tasks = [asyncio.ensure_future(sleeper(n, s)) for n, s in (("b", 2.0), ("a", 0.5), ("c", 3.5))]
    await clock.run_until(3.0)
    assert woke == [("a", 0.5), ("b", 2.0)] and clock() == 3.0
    await clock.advance(1.0)
    assert woke[-1] == ("c", 3.5) and clock() == 4.0
    await asyncio.gather(*tasks)

    async def slow():
        async with deadline(clock, 1.0):
            await clock.sleep(10.0)

    late = asyncio.ensure_future(slow())
    await clock.advance(0.999)
    assert not late.done()
    await clock.advance(0.001)
    with pytest.raises(TimeoutError):
        await late

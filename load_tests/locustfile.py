"""Locust load test: many simultaneous avatar conversations over real WebRTC.

    LOCUST_SKIP_MONKEY_PATCH=1 locust -f load_tests/locustfile.py --headless \\
        --host http://127.0.0.1:8000 --users 3 --spawn-rate 1 --run-time 2m --stop-timeout 180 \\
        --csv out/locust --html out/locust.html [--turns 2] [--barge-in-every 0] [--ice-host 127.0.0.1] [--render browser]

Each user opens a session with the project's Python client (load_tests/conversation.py), speaks
recorded utterances (questions spoken by the TTS) into it in real time, waits for the whole reply,
every ``--barge-in-every``-th turn talks over a long reply instead, and hangs up. Reported to Locust
under request type ``webrtc`` (response_time is milliseconds except where said):

    session setup      offer sent to first video frame received
    turn               voice to voice of a turn: end of the user's speech to the reply's first
                       sounding audio; a failed or incomplete turn is a failure here, with the reason
    barge-in           a barge-in turn: the talked-over reply's stop, from the voice's onset
    video fps          faces per second received while the avatar spoke (video frames, or motion
                       packets with --render browser; the value is fps, not ms)
    hang up            DELETE and close

Why ``LOCUST_SKIP_MONKEY_PATCH=1``: with gevent's monkey-patching aiortc's decoders never run
(../shared/notes/serving.md). The clients run on one asyncio loop in a real thread; each Locust
user (a greenlet) hands its steps to that loop and waits for them without blocking the others.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from pathlib import Path

import gevent
import gevent.event
import gevent.monkey
import locust.stats
from locust import User, between, events, task

if gevent.monkey.is_module_patched("socket"):
    raise RuntimeError("run Locust with LOCUST_SKIP_MONKEY_PATCH=1: gevent's monkey-patching stops "
                       "aiortc (see the docstring of load_tests/locustfile.py)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: load_tests is not installed
from load_tests.conversation import Conversation, Utterance, spoken_questions  # noqa: E402

_utterances: list[Utterance] = []
log = logging.getLogger("avatar-chat.load")
for _name in ("aioice", "aiortc", "httpx"):  # a line per ICE check and request drowns Locust's own
    logging.getLogger(_name).setLevel(logging.WARNING)


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--turns", type=int, default=2, help="turns per session before hanging up")
    parser.add_argument("--barge-in-every", type=int, default=0,
                        help="every Nth turn talks over a long reply (0: never)")
    parser.add_argument("--ice-host", default="",
                        help="the client's ICE host address (e.g. 127.0.0.1 when the service's "
                             "sessions.host_addresses is [127.0.0.1]); empty: aiortc's default")
    parser.add_argument("--turn-timeout", type=float, default=120.0, help="seconds a reply may take")
    parser.add_argument("--render", default="", choices=["", "server", "browser"],
                        help="render mode asked for (browser: face motion on a data channel instead "
                             "of video); empty: the service's default")


@events.init.add_listener
def _speak_questions(environment, **_):
    if not _utterances:
        _utterances.extend(spoken_questions())


class AsyncioThread:
    """One asyncio loop in a real thread for every WebRTC client of this Locust process."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="webrtc-clients", daemon=True).start()

    def run(self, coro):
        """Run ``coro`` on the loop; the calling greenlet waits, the other users go on. If the
        greenlet is killed (Locust stopping), the coroutine is cancelled."""
        done = gevent.event.AsyncResult()
        hub_loop = gevent.get_hub().loop
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)

        def settle(f):
            if f.cancelled():
                done.set_exception(asyncio.CancelledError())
            elif f.exception() is not None:
                done.set_exception(f.exception())
            else:
                done.set(f.result())

        future.add_done_callback(lambda f: hub_loop.run_callback_threadsafe(settle, f))
        try:
            return done.get()
        except gevent.GreenletExit:
            future.cancel()
            raise


class InFlight:
    """The conversations under way. When Locust stops, it is told to wait for them (hung up and
    reported) before it tallies, and no new one starts: Locust's own stop-timeout did not always
    wait for a user in the middle of a task."""

    def __init__(self):
        self.count, self.stopping = 0, False
        self._none = gevent.event.Event()
        self._none.set()

    def begin(self) -> bool:
        if self.stopping:
            return False
        self.count += 1
        self._none.clear()
        return True

    def end(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._none.set()

    def drain(self, timeout_s: float | None) -> None:
        self.stopping = True
        if not self._none.wait(timeout_s):
            log.warning("%d conversations still under way after %s s", self.count, timeout_s)


_clients = AsyncioThread()
_in_flight = InFlight()


@events.test_stopping.add_listener
def _finish_conversations(environment, **_):
    _in_flight.drain(environment.stop_timeout or None)
    # Locust rewrites its CSV once a CSV_STATS_INTERVAL_SEC and not again at exit: give it one more
    # round so the last conversations' reports are in the files.
    gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.2)


class AvatarUser(User):
    wait_time = between(1, 3)
    _count = 0

    def on_start(self):
        AvatarUser._count += 1
        self.number = AvatarUser._count  # which utterances this user speaks

    def _report(self, name: str, value: float, error: str | None = None, started: float | None = None):
        self.environment.events.request.fire(
            request_type="webrtc", name=name, response_time=value, response_length=0,
            exception=None if error is None else AssertionError(error), context={"user": self.number},
            start_time=started or time.time())

    @task
    def conversation(self):
        if not _in_flight.begin():
            return
        try:
            self._converse()
        finally:
            _in_flight.end()

    def _converse(self):
        opts = self.environment.parsed_options
        conv = Conversation(self.host, _utterances, host_addresses=[opts.ice_host] if opts.ice_host else None,
                            timeout_s=opts.turn_timeout, render=opts.render or None)
        started = time.time()
        try:
            setup_s = _clients.run(conv.open())
        except Exception as e:  # noqa: BLE001 -- refused, ICE failure, timeout: all a failed set-up
            self._report("session setup", (time.time() - started) * 1000, f"{type(e).__name__}: {e}", started)
            _clients.run(conv.close())
            return
        self._report("session setup", setup_s * 1000, None, started)
        try:
            for k in range(opts.turns):
                utt = _utterances[(self.number + k) % len(_utterances)]
                barge = opts.barge_in_every and (k + 1) % opts.barge_in_every == 0
                started = time.time()
                result = _clients.run(conv.barge_in(utt) if barge else conv.turn(utt))
                log.info("user %d turn %d%s: %s", self.number, k, " (barge-in)" if barge else "", result)
                v2v = result.voice_to_voice_s
                self._report("turn", (time.time() - started) * 1000 if v2v is None else v2v * 1000,
                             result.error, started)
                if result.video_fps is not None:
                    self._report("video fps", result.video_fps)
                if result.interruption_s is not None:
                    self._report("barge-in", result.interruption_s * 1000)
                if result.error is not None:
                    break
        except BaseException as e:
            log.info("user %d: conversation ended by %r", self.number, e)
            raise
        finally:
            started = time.time()
            _clients.run(conv.close())
            self._report("hang up", (time.time() - started) * 1000)

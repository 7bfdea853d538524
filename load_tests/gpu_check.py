"""GPU check: latency and throughput per batch size of the production models at full size.

The production stages are SenseVoice (ASR, through funasr), CosyVoice 2 (TTS, the official code as
packaged in ``cosyvoice-minicpmo``) and a Qwen2.5-1.5B-Instruct-shaped LLM (served by vLLM in
production). Their weights are not reachable, so this builds each at its released shape with random
weights (load_tests/random_models), loads it with the real library and times it:

- ``asr``: ``funasr.AutoModel(...).generate(input=[B arrays of 5 s at 16 kHz], batch_size=B)``: one
  model call per batch (without a VAD model funasr batches by ``batch_size`` items; ``batch_size_s``
  only applies with one), so B utterances share one padded encoder pass.
- ``tts``: ``CosyVoice2.inference_sft(text, speaker, stream=True)`` in B threads at once (the model
  keeps each call's state under its own uuid): first-chunk latency, real-time factor, and whether
  every stream kept ahead of its playback.
- ``llm``: vLLM is not on the GPU machine, so the same shape runs through ``transformers``: prefill
  of a 300-token prompt, then greedy decoding of 64 tokens at batch B. Eager PyTorch without paged
  attention or CUDA graphs: lower bounds for vLLM.
- ``avatar`` (opt-in: ``--stages asr,tts,llm,avatar``): MuseTalk 1.5's per-frame work, one UNet step
  (timestep 0, 8 latent channels, 50 whisper-tiny audio tokens) and a VAE decode of B 256x256 faces
  in one call, as the ``musetalk`` backend batches faces across sessions; plus one whisper-tiny
  encoder pass over a 30 s window (once per request, not per frame).

    python -m load_tests.gpu_check --device cuda              # the GPU run: one JSON document
    python -m load_tests.gpu_check --size tiny --device cpu --batches 1,2 --dtype float32
    python -m load_tests.gpu_check --plan                      # wheels the GPU machine needs
    python -m load_tests.gpu_check --bare ...                  # run with only those wheels visible

Batch 1 is each stage's baseline: every batch reports its speed-up over it. ``sessions`` turns the
numbers into sessions per GPU under an assumption written next to it in the JSON. Everything else
(libraries' logs, progress bars) goes to stderr; stdout carries the JSON document alone:

    machine    device, gpu, gpu_memory_gib, torch, cuda, cpu, python, libraries,
               requirement_conflicts (carried wheels the machine's own packages do not satisfy)
    settings   size, dtype, batches, repeats, stages, stage_budget_s
    build_s    {stage: seconds to build its model, or the build's error}
    stages     {stage: model, parameters, precision, input, latency (what median_ms/p95_ms time),
                batches: [{batch, median_ms, p95_ms, n, <throughput>, speedup_vs_batch1, ...}
                          | {batch, skipped} | {batch, error}],
                sessions, sessions_assumption, stage_s, peak_gpu_memory_gib} or {error}
      asr      utterances_per_s, audio_s_per_s, sessions, within_latency_budget per batch
      tts      batch = concurrent streams; latency = first chunk; rtf_median, rtf_max,
               real_time_fraction, audio_s_per_stream, audio_s_per_s (all streams together)
      llm      prefill {median_ms, p95_ms}, inter_token_ms, tokens_per_s_per_sequence,
               tokens_per_s_total; lower_bound (vLLM does better)
      avatar   faces_per_s per batch; whisper_window {median_ms, p95_ms, n}
    stand_ins  modules that were stood in for, and why that is safe; sessions {stage: n}; total_s

``--size full`` is refused on the CPU: it builds ~2.3 B parameters (~8 GB on disk).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import importlib.machinery
import importlib.metadata as metadata
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("asr", "tts", "llm", "avatar")
DEFAULT_STAGES = ("asr", "tts", "llm")  # the avatar stage runs when asked for
DTYPES = ("float16", "bfloat16", "float32")
UPLOAD_LIMIT_MIB = 64  # what reaches the GPU machine: the repository plus any extra wheels

# What a session asks of each stage; the JSON repeats these next to the numbers they turn into sessions.
ASR_CLIP_S = 5.0
ASR_EVERY_S = 15.0  # one 5 s utterance per session every 15 s
ASR_LATENCY_BUDGET_MS = 500.0  # end of speech to transcript, at p95
TTS_TEXT_TOKENS = 6  # the random LLM speaks 20 speech tokens per text token (0.8 s): ~4.8 s of audio
LLM_PROMPT_TOKENS = 300
LLM_NEW_TOKENS = 64
LLM_SESSION_TOK_S = 15.0  # a reply read aloud needs ~15 tokens/s per session
AVATAR_FPS = 25  # a speaking MuseTalk session needs 25 faces/s

ASSUMPTIONS = {
    "asr": (f"one {ASR_CLIP_S:g} s utterance per session every {ASR_EVERY_S:g} s, the GPU running "
            f"back-to-back batches: sessions = utterances/s x {ASR_EVERY_S:g}, counted only for batch "
            f"sizes whose p95 latency is within {ASR_LATENCY_BUDGET_MS:g} ms"),
    "tts": ("a session speaking needs one stream at >= 1x real time: sessions = the most concurrent "
            "streams of which every one stayed ahead of its playback (playback starting at its first "
            "chunk). Sessions not speaking at that moment need none, so this counts speakers at once"),
    "llm": (f"{LLM_NEW_TOKENS} tokens per turn after a {LLM_PROMPT_TOKENS}-token prompt, at >= "
            f"{LLM_SESSION_TOK_S:g} tokens/s per session while it generates: sessions = the largest "
            "batch whose per-sequence decode rate meets that, i.e. all of them generating at once"),
    "avatar": (f"a speaking session needs {AVATAR_FPS} faces/s, the GPU running back-to-back batches: "
               f"sessions = the best faces/s / {AVATAR_FPS}. Silent sessions loop the base video and "
               "need none, so this counts speakers at once"),
}


# ---------------------------------------------------------------------------------------------
# Stand-ins: modules CosyVoice 2's code imports but never calls when it speaks an SFT voice
# ---------------------------------------------------------------------------------------------
# Each is large, binary or both (onnxruntime 26 MiB, scipy 34 MiB, librosa -> numba + llvmlite
# 57 MiB), where the GPU machine takes 64 MiB. A stand-in is put in sys.modules only while a model
# is built or loaded, and only when the real module does not import: CosyVoice's modules keep what
# they imported; later imports elsewhere see the truth. ``--bare`` proves the set.

class _NotHere:
    """What a stand-in hands out for a name: calling it fails, naming what was missing."""

    def __init__(self, name: str):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is a stand-in (load_tests/gpu_check.py): the real module is "
                           "not installed, and this path of CosyVoice 2 was not expected to call it")

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _NotHere(f"{self._name}.{attr}")


def _hann_window(window, n: int, fftbins: bool = True):
    """scipy.signal.get_window for the one window HiFT asks for (``"hann"``, periodic), exactly."""
    import numpy as np

    if window != "hann":
        raise RuntimeError(f"the scipy stand-in only makes 'hann' windows, not {window!r}")
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * k / (n if fftbins else n - 1))


class _OrtSession:
    """onnxruntime.InferenceSession stand-in: campplus and the speech tokenizer serve zero-shot
    prompts only; an SFT voice never runs them."""

    def __init__(self, path, *args, **kwargs):
        if not Path(path).exists():
            raise FileNotFoundError(path)
        self.path = str(path)

    def run(self, *args, **kwargs):
        raise RuntimeError(f"onnxruntime is a stand-in here: {self.path} cannot run")

    def get_inputs(self):
        raise RuntimeError(f"onnxruntime is a stand-in here: {self.path} cannot run")


# top-level module -> (why it is safe, submodules, names with real behaviour)
STAND_INS: dict[str, tuple[str, tuple[str, ...], dict]] = {
    "torchaudio": ("fbank, resampling and file loading of zero-shot prompts; its wheel must match "
                   "the machine's torch exactly", ("compliance", "compliance.kaldi", "transforms"), {}),
    "whisper": ("openai-whisper: the CosyVoice 1 tokenizer and the speech tokenizer's log-mel "
                "(zero-shot prompts); pulls numba + llvmlite", ("tokenizer",), {}),
    "tiktoken": ("the CosyVoice 1 (whisper) tokenizer; CosyVoice 2 uses Qwen's", (), {}),
    "modelscope": ("snapshot_download, called only when the model directory does not exist", (), {}),
    "librosa": ("funasr: resampling and file loading (arrays at 16 kHz need neither); Matcha: the mel "
                "filterbank of zero-shot prompt features; pulls numba + llvmlite, scipy, scikit-learn",
                ("filters", "util"), {}),
    "scipy": ("scipy.signal.get_window('hann') for HiFT's STFT, computed here exactly; "
              "scipy.io.wavfile is never called", ("signal", "io", "io.wavfile"),
              {"signal": {"get_window": _hann_window}}),
    "matplotlib": ("matcha.utils' plotting helpers (training); a large binary wheel", ("pyplot",), {}),
    "gdown": ("matcha.utils' checkpoint download helper (training)", (), {}),
    "wget": ("matcha.utils' checkpoint download helper (training)", (), {}),
    "inflect": ("English number spelling for text normalisation, which cosyvoice-minicpmo comments "
                "out; pulls the jaraco.* family", (), {}),
    "onnxruntime": ("campplus and the speech tokenizer (ONNX) embed zero-shot prompts; an SFT "
                    "speaker's embedding is stored in spk2info.pt",
                    (), {"": {"InferenceSession": _OrtSession, "SessionOptions": types.SimpleNamespace,
                              "GraphOptimizationLevel": types.SimpleNamespace(ORT_ENABLE_ALL=99)}}),
}
# funasr imports torchaudio if it can, and then uses it for features: it gets no torchaudio stand-in
ASR_STAND_INS = ("librosa",)
TTS_STAND_INS = tuple(STAND_INS)
_stand_ins_used: set[str] = set()


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # missing, or present but broken (a torchaudio built for another torch)
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        return False


def _stand_in_modules(top: str) -> dict[str, types.ModuleType]:
    _, subs, real = STAND_INS[top]
    modules = {}
    for suffix in ("",) + subs:
        name = f"{top}.{suffix}" if suffix else top
        module = types.ModuleType(name, f"stand-in (load_tests/gpu_check.py) for {name}")
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() callers need one
        module.__path__ = []  # a package, so its submodules import
        module.__getattr__ = _NotHere(name).__getattr__
        for attr, value in real.get(suffix, {}).items():
            setattr(module, attr, value)
        modules[name] = module
    for name, module in modules.items():  # parent.child attributes, as an import would set them
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(modules[parent], child, module)
    return modules


# Libraries CosyVoice imports that ask, when imported, whether an optional module is installed
# (find_spec), and import more of it on a yes.
PROBING = ("transformers.generation.utils", "transformers.modeling_utils", "diffusers", "lightning",
           "torchmetrics")


def _settle_probes(names) -> None:
    """Let libraries that ask whether a module is installed get the true answer first, before a
    stand-in could be taken for it: import them now, and fill transformers' cached
    ``is_<name>_available()``."""
    for module in PROBING:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    with contextlib.suppress(ImportError):
        from transformers.utils import import_utils

        for name in names:
            getattr(import_utils, f"is_{name}_available", lambda: None)()


@contextlib.contextmanager
def stand_ins(*names: str):
    """Stand-ins in sys.modules for those of ``names`` that do not import here, meanwhile."""
    wanted = [top for top in names if top not in sys.modules and not _importable(top)]
    if wanted:
        _settle_probes(wanted)
    added = {}
    for top in wanted:
        added.update(_stand_in_modules(top))
    sys.modules.update(added)
    _stand_ins_used.update(wanted)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def sync(device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary_ms(seconds: list[float]) -> dict:
    """Median and p95 (linear interpolation) of ``seconds``, in milliseconds."""
    import numpy as np

    return {"median_ms": round(statistics.median(seconds) * 1000, 3),
            "p95_ms": round(float(np.percentile(seconds, 95)) * 1000, 3), "n": len(seconds)}


def timed(fn, repeats: int, device) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
    return samples


def over_batches(batches: list[int], measure, budget_s: float) -> list[dict]:
    """``measure(batch)`` for each batch size, skipping those that would push the stage past
    ``budget_s`` (predicted linearly from the previous batch): the check has to finish in minutes.
    A batch that fails (out of memory, say) is recorded, and the larger ones are not tried."""
    results, started, last = [], time.perf_counter(), None
    for batch in batches:
        spent = time.perf_counter() - started
        if last is not None:
            predicted = last[1] * batch / last[0]
            if spent + predicted > budget_s:
                results.append({"batch": batch, "skipped": f"predicted {predicted:.0f} s would pass the "
                                f"stage budget of {budget_s:.0f} s ({spent:.0f} s spent)"})
                continue
        case_start = time.perf_counter()
        try:
            results.append({"batch": batch, **measure(batch)})
        except Exception as error:
            if batch == batches[0]:
                raise  # no baseline: the stage failed
            traceback.print_exc()
            results.append({"batch": batch, "error": f"{type(error).__name__}: {error}"})
            break
        last = (batch, time.perf_counter() - case_start)
    return results


def add_speedups(results: list[dict], throughput_key: str) -> None:
    """Speed-up of each batch's throughput over batch 1's (the baseline, measured in the same run)."""
    base = next(r[throughput_key] for r in results if r["batch"] == 1)
    for r in results:
        if throughput_key in r:
            r["speedup_vs_batch1"] = round(r[throughput_key] / base, 3)


def autocast(device, dtype: str):
    """Mixed precision where ``dtype`` is not float32: the weights stay float32, matmuls run in it."""
    import torch

    return torch.autocast(device.type, dtype=torch_dtype(dtype), enabled=dtype != "float32")


# ---------------------------------------------------------------------------------------------
# ASR: SenseVoice through funasr
# ---------------------------------------------------------------------------------------------

def speech_like(i: int, seconds: float, rate: int = 16000):
    """Test audio: tones and noise, different for each ``i`` (the weights are random anyway)."""
    import numpy as np

    rng = np.random.default_rng(i)
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * rng.uniform(100, 1200) * t) for _ in range(3)) * 0.1
    return (tone + rng.standard_normal(t.size) * 0.05).astype(np.float32)


def asr_stage(model_dir: Path, args, device) -> dict:
    import torch

    with stand_ins(*ASR_STAND_INS):
        from funasr import AutoModel

        model = AutoModel(model=str(model_dir), device=str(device), disable_update=True,
                          disable_pbar=True, disable_log=True, ncpu=torch.get_num_threads())
    clips = [speech_like(i, ASR_CLIP_S) for i in range(max(args.batches))]

    def measure(batch: int) -> dict:
        def run():
            with autocast(device, args.dtype):
                out = model.generate(input=clips[:batch], cache={}, language="auto", use_itn=True,
                                     batch_size=batch)
            assert len(out) == batch, f"{len(out)} results for {batch} utterances"

        seconds = timed(run, args.repeats, device)
        median = statistics.median(seconds)
        return {**summary_ms(seconds), "utterances_per_s": round(batch / median, 3),
                "audio_s_per_s": round(batch * ASR_CLIP_S / median, 3)}

    results = over_batches(args.batches, measure, args.stage_budget_s)
    add_speedups(results, "utterances_per_s")
    for r in results:
        if "utterances_per_s" in r:
            r["sessions"] = int(r["utterances_per_s"] * ASR_EVERY_S)
            r["within_latency_budget"] = r["p95_ms"] <= ASR_LATENCY_BUDGET_MS
    fitting = [r["sessions"] for r in results if r.get("within_latency_budget")]
    return {"model": "SenseVoiceSmall (funasr AutoModel)",
            "parameters": sum(p.numel() for p in model.model.parameters()),
            "precision": f"float32 weights, autocast {args.dtype}" if args.dtype != "float32" else "float32",
            "input": f"B clips of {ASR_CLIP_S:g} s at 16 kHz, language=auto, use_itn=True",
            "latency": "one generate() call for the whole batch",
            "batches": results, "sessions": max(fitting, default=0),
            "sessions_assumption": ASSUMPTIONS["asr"]}


# ---------------------------------------------------------------------------------------------
# TTS: CosyVoice 2 streaming an SFT voice
# ---------------------------------------------------------------------------------------------

def load_cosyvoice(model_dir: Path, fp16: bool):
    """``CosyVoice2(dir)`` with its LLM put back as the production backend does (cosyvoice-minicpmo
    drops it: MiniCPM-o makes the speech tokens itself); half precision with fp16, as upstream."""
    from avatarchat.backends.tts._cosyvoice_llm import load_cosyvoice2_llm

    with stand_ins(*TTS_STAND_INS):
        import cosyvoice.cli.cosyvoice as cli

        cv = cli.CosyVoice2(str(model_dir), fp16=fp16)
        llm = load_cosyvoice2_llm(model_dir, cv.model.device)
    # transformers may load the Qwen inside as bfloat16 (its config's dtype) beside float32 layers
    cv.model.llm = llm.half() if cv.model.fp16 else llm.float()
    return cv


def utterance(tokenizer, n_tokens: int) -> str:
    """English text of at least ``n_tokens`` tokens: the random LLM never stops by itself (the
    builder's STOP_BIAS), so every sentence runs to 20 speech tokens per text token."""
    words = ("hello how are you today I am fine thank you the weather is nice what would you like "
             "to talk about").split()
    text = ""
    for word in words * 4:
        text = f"{text} {word}".strip()
        if len(tokenizer.encode(text, allowed_special="all")) >= n_tokens:
            return text + "."
    return text + "."


def one_stream(cv, text: str, speaker: str, start: threading.Barrier | None = None) -> dict:
    """Stream ``text``; when each chunk came and how much audio it held."""
    if start is not None:
        start.wait()
    began = time.perf_counter()
    arrivals, durations = [], []
    for out in cv.inference_sft(text, speaker, stream=True, text_frontend=False):
        arrivals.append(time.perf_counter() - began)
        durations.append(out["tts_speech"].shape[1] / cv.sample_rate)
    # playback starts with the first chunk; each later chunk must come before the audio ahead runs out
    kept_up = all(arrivals[k] <= arrivals[0] + sum(durations[:k]) for k in range(1, len(arrivals)))
    audio = sum(durations)
    return {"first_chunk_s": arrivals[0], "wall_s": arrivals[-1], "audio_s": audio,
            "rtf": arrivals[-1] / audio, "kept_real_time": kept_up, "chunks": len(arrivals)}


def concurrent_streams(cv, text: str, speakers: list[str], n: int) -> tuple[list[dict], float]:
    """``n`` streams started together in threads; their results and the wall time of the round."""
    barrier = threading.Barrier(n)
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one_stream, cv, text, speakers[i % len(speakers)], barrier)
                   for i in range(n)]
        streams = [f.result() for f in futures]
    return streams, time.perf_counter() - began


def tts_stage(model_dir: Path, args, device) -> dict:
    fp16 = args.dtype != "float32" and device.type == "cuda"
    cv = load_cosyvoice(model_dir, fp16)
    speakers = cv.list_available_spks()
    text = utterance(cv.frontend.tokenizer, TTS_TEXT_TOKENS)
    one_stream(cv, text, speakers[0])  # warm-up

    def measure(n: int) -> dict:
        streams, wall, audio = [], 0.0, 0.0
        for _ in range(max(1, math.ceil(args.repeats / n))):  # at least `repeats` streams per case
            got, seconds = concurrent_streams(cv, text, speakers, n)
            streams += got
            wall += seconds
            audio += sum(s["audio_s"] for s in got)
        first = summary_ms([s["first_chunk_s"] for s in streams])
        rtf = [s["rtf"] for s in streams]
        return {**first, "rtf_median": round(statistics.median(rtf), 4), "rtf_max": round(max(rtf), 4),
                "real_time_fraction": round(sum(s["kept_real_time"] for s in streams) / len(streams), 3),
                "audio_s_per_stream": round(statistics.median(s["audio_s"] for s in streams), 3),
                "chunks_per_stream": statistics.median(s["chunks"] for s in streams),
                "audio_s_per_s": round(audio / wall, 3)}

    results = over_batches(args.batches, measure, args.stage_budget_s)
    add_speedups(results, "audio_s_per_s")
    keeping_up = [r["batch"] for r in results if r.get("real_time_fraction") == 1.0]
    return {"model": "CosyVoice2-0.5B layout (cosyvoice-minicpmo's CosyVoice2, its LLM restored)",
            "parameters": {name: sum(p.numel() for p in getattr(cv.model, name).parameters())
                           for name in ("llm", "flow", "hift")},
            "precision": ("fp16 (CosyVoice's own fp16 flag, its only reduced precision)" if fp16
                          else "float32"),
            "device": str(cv.model.device),
            "input": f"inference_sft(stream=True), text {text!r}, speakers {speakers}",
            "latency": "first chunk of each stream, from the call; batch = concurrent streams",
            "batches": results, "sessions": max(keeping_up, default=0),
            "sessions_assumption": ASSUMPTIONS["tts"]}


# ---------------------------------------------------------------------------------------------
# LLM: the Qwen2 shape through transformers (vLLM's lower bound)
# ---------------------------------------------------------------------------------------------

def load_llm(model_dir: Path, dtype: str, device):
    import transformers
    from transformers import AutoModelForCausalLM

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in 4.56
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **{key: torch_dtype(dtype)})
    return model.to(device).eval()


def greedy(model, prompt, new_tokens: int, device) -> tuple[float, float]:
    """Prefill ``prompt`` [B, T], then decode ``new_tokens`` greedily: (prefill s, decode s)."""
    import inspect

    import torch

    # only the last position's logits: 300 x 151,936 logits per sequence would be ~90 MB each
    accepted = inspect.signature(model.forward).parameters
    keep = next(({name: 1} for name in ("logits_to_keep", "num_logits_to_keep")  # older: num_
                 if name in accepted), {})
    with torch.inference_mode():
        sync(device)
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True, **keep)
        token = out.logits[:, -1:].argmax(-1)
        sync(device)
        prefilled = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        sync(device)
    return prefilled - start, time.perf_counter() - prefilled


def llm_stage(model_dir: Path, args, device) -> dict:
    import torch
    from tokenizers import Tokenizer

    model = load_llm(model_dir, args.dtype, device)
    n_text = Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab_size()
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, n_text, (max(args.batches), LLM_PROMPT_TOKENS), generator=gen)

    def measure(batch: int) -> dict:
        prompt = prompts[:batch].to(device)
        greedy(model, prompt, LLM_NEW_TOKENS, device)  # warm-up
        runs = [greedy(model, prompt, LLM_NEW_TOKENS, device) for _ in range(args.repeats)]
        decode = statistics.median(d for _, d in runs)
        per_sequence = (LLM_NEW_TOKENS - 1) / decode
        return {**summary_ms([p + d for p, d in runs]),
                "prefill": summary_ms([p for p, _ in runs]),
                "inter_token_ms": round(decode / (LLM_NEW_TOKENS - 1) * 1000, 3),
                "tokens_per_s_per_sequence": round(per_sequence, 2),
                "tokens_per_s_total": round(per_sequence * batch, 2)}

    results = over_batches(args.batches, measure, args.stage_budget_s)
    add_speedups(results, "tokens_per_s_total")
    fast_enough = [r["batch"] for r in results
                   if r.get("tokens_per_s_per_sequence", 0) >= LLM_SESSION_TOK_S]
    return {"model": f"{model.config.model_type} shape of Qwen2.5-1.5B-Instruct ({args.size}) "
                     "through transformers",
            "parameters": sum(p.numel() for p in model.parameters()),
            "precision": args.dtype,
            "input": f"B random prompts of {LLM_PROMPT_TOKENS} tokens, {LLM_NEW_TOKENS} greedy tokens",
            "latency": "a whole turn: prefill plus all decode steps (prefill and inter_token_ms apart)",
            "batches": results, "sessions": max(fast_enough, default=0),
            "sessions_assumption": ASSUMPTIONS["llm"],
            "lower_bound": ("eager transformers with a dynamic KV cache; vLLM (paged attention, CUDA "
                            "graphs, continuous batching) serves this shape faster: read these as "
                            "lower bounds")}


# ---------------------------------------------------------------------------------------------
# Avatar: MuseTalk 1.5's UNet step and VAE decode per face, whisper-tiny per request
# ---------------------------------------------------------------------------------------------

def avatar_stage(model_dir: Path, args, device) -> dict:
    """The models the ``musetalk`` backend runs, loaded as it loads them (its module needs PyAV and
    OpenCV, which the GPU machine lacks), timed on random inputs of the shapes it feeds them."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperModel

    dtype = torch_dtype(args.dtype)
    unet = UNet2DConditionModel.from_config(
        UNet2DConditionModel.load_config(str(model_dir / "musetalkV15" / "musetalk.json")))
    unet.load_state_dict(torch.load(model_dir / "musetalkV15" / "unet.pth", map_location="cpu",
                                    weights_only=True))
    vae = AutoencoderKL.from_pretrained(str(model_dir / "sd-vae"), use_safetensors=False)
    whisper = WhisperModel.from_pretrained(str(model_dir / "whisper")).get_encoder()
    unet, vae, whisper = (m.to(device, dtype).eval().requires_grad_(False) for m in (unet, vae, whisper))
    width = whisper.config.d_model
    tokens = 10 * (whisper.config.encoder_layers + 1)  # 10 feature steps per frame, every layer
    timestep = torch.tensor([0], device=device)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(max(args.batches), 8, 32, 32, generator=generator).to(device, dtype)
    audio = torch.randn(max(args.batches), tokens, width, generator=generator).to(device, dtype)

    def measure(batch: int) -> dict:
        def run():
            with torch.inference_mode():
                pred = unet(latents[:batch], timestep, encoder_hidden_states=audio[:batch]).sample
                faces = vae.decode(pred / vae.config.scaling_factor).sample
            assert faces.shape == (batch, 3, 256, 256), faces.shape

        seconds = timed(run, args.repeats, device)
        return {**summary_ms(seconds), "faces_per_s": round(batch / statistics.median(seconds), 3)}

    results = over_batches(args.batches, measure, args.stage_budget_s)
    add_speedups(results, "faces_per_s")
    mel = torch.randn(1, whisper.config.num_mel_bins, 2 * whisper.config.max_source_positions,
                      generator=generator).to(device, dtype)

    def encode():
        with torch.inference_mode():
            whisper(mel, output_hidden_states=True)

    best = max((r["faces_per_s"] for r in results if "faces_per_s" in r), default=0.0)
    return {"model": "MuseTalk 1.5 (diffusers UNet2DConditionModel + AutoencoderKL decoder; "
                     "transformers whisper-tiny encoder)",
            "parameters": {name: sum(p.numel() for p in m.parameters())
                           for name, m in (("unet", unet), ("vae", vae), ("whisper_encoder", whisper))},
            "precision": args.dtype,
            "input": f"B faces: latents [B, 8, 32, 32], audio tokens [B, {tokens}, {width}], timestep 0",
            "latency": "one UNet step and one VAE decode of the whole batch",
            "batches": results,
            "whisper_window": summary_ms(timed(encode, args.repeats, device)),
            "sessions": int(best // AVATAR_FPS), "sessions_assumption": ASSUMPTIONS["avatar"]}


# ---------------------------------------------------------------------------------------------
# Building the random-weight models
# ---------------------------------------------------------------------------------------------

def _build(stage: str, dest: str, size: str) -> tuple[float, list[str]]:
    """Build one model (in a worker process): the seconds it took, the stand-ins it used."""
    began = time.perf_counter()
    builder = {"asr": "sensevoice", "tts": "cosyvoice", "llm": "llm", "avatar": "musetalk"}[stage]
    try:
        with stand_ins(*{"asr": ASR_STAND_INS, "tts": TTS_STAND_INS}.get(stage, ())):
            importlib.import_module(f"load_tests.random_models.{builder}").build(Path(dest), size)
    except Exception as error:
        traceback.print_exc()  # here: the parent gets the message only (tracebacks do not pickle)
        raise RuntimeError(f"{type(error).__name__}: {error}") from None
    return time.perf_counter() - began, sorted(_stand_ins_used)


def build_models(stages: list[str], work: Path, size: str) -> tuple[dict[str, Path], dict]:
    """Each stage's model directory under ``work``, built in parallel processes (the builders are
    CPU-bound) unless an earlier run with the same ``--work`` completed it; and per stage the
    seconds its build took, or the error that stopped it."""
    dirs = {s: work / f"{s}-{size}" for s in stages}
    todo = [s for s in stages if not (dirs[s] / ".complete").exists()]
    built: dict = {s: 0.0 for s in stages}
    if todo:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state forked
        with concurrent.futures.ProcessPoolExecutor(len(todo), mp_context=ctx) as pool:
            futures = {s: pool.submit(_build, s, str(dirs[s]), size) for s in todo}
            for s, future in futures.items():
                try:
                    seconds, used = future.result()
                    built[s] = round(seconds, 1)
                    _stand_ins_used.update(used)
                    (dirs[s] / ".complete").touch()
                except Exception as error:  # the other stages still run
                    built[s] = f"{type(error).__name__}: {error}"
    return dirs, built


# ---------------------------------------------------------------------------------------------
# The machine, the run
# ---------------------------------------------------------------------------------------------

def machine(device) -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    info = {"device": str(device), "torch": torch.__version__, "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "libraries": {}}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    gpu_memory_gib=round(props.total_memory / 2**30, 1))
    for dist in ("transformers", "huggingface-hub", "funasr", "cosyvoice-minicpmo", "diffusers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info["libraries"][dist] = metadata.version(dist)
    info["requirement_conflicts"] = requirement_conflicts()
    return info


RUNNERS = {"asr": asr_stage, "tts": tts_stage, "llm": llm_stage, "avatar": avatar_stage}


def run_stage(stage: str, model_dir: Path, args, device) -> dict:
    """One stage's results, or its error (the other stages' numbers still count)."""
    import gc

    import torch

    began = time.perf_counter()
    try:
        result = RUNNERS[stage](model_dir, args, device)
    except Exception as error:
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}"}
    result["stage_s"] = round(time.perf_counter() - began, 1)
    gc.collect()  # the stage's model goes before the next one loads
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return result


def check(args) -> tuple[dict, bool]:
    """Build, load and time each stage: (the JSON document, whether every stage ran)."""
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    if device.type == "cpu" and args.size == "full":
        raise SystemExit("--size full on the CPU builds ~2.3 B parameters (~8 GB) and times them for "
                         "an hour: use --size tiny here, full on a GPU")
    began = time.perf_counter()
    doc = {"check": "load_tests/gpu_check.py", "machine": machine(device),
           "settings": {k: getattr(args, k) for k in ("size", "dtype", "batches", "repeats", "stages",
                                                       "stage_budget_s")},
           "notes": ["random weights at the released shapes: timing, memory and batching are the real "
                     "models'; the words are not",
                     "batch 1 is each stage's baseline; speedup_vs_batch1 compares throughputs measured "
                     "in this run"],
           "build_s": {}, "stages": {}}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        dirs, doc["build_s"] = build_models(args.stages, work, args.size)
        for stage in args.stages:
            built = doc["build_s"][stage]
            doc["stages"][stage] = ({"error": f"build: {built}"} if isinstance(built, str)
                                    else run_stage(stage, dirs[stage], args, device))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    doc["stand_ins"] = {name: STAND_INS[name][0] for name in sorted(_stand_ins_used)}
    doc["sessions"] = {stage: result.get("sessions") for stage, result in doc["stages"].items()}
    doc["total_s"] = round(time.perf_counter() - began, 1)
    return doc, all("error" not in result for result in doc["stages"].values())


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout (libraries print, C code too) to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# ---------------------------------------------------------------------------------------------
# --plan: the wheels the GPU machine needs; --bare: a run that sees only those
# ---------------------------------------------------------------------------------------------

# Installed on the GPU machine already, with what their requirements pull in.
BASE = ("torch", "transformers")
# Beyond BASE, what the three stages import there (with the stand-ins), each installed --no-deps.
WHEELS = {
    "funasr": "SenseVoice's loader (AutoModel), model and frontend code",
    "kaldiio": "funasr's load_utils imports it (Kaldi ark files)",
    "rapidfuzz": "SenseVoice's model imports paraformer's search, which imports funasr.metrics",
    "six": "funasr.metrics",
    "requests": "funasr.download (imported by AutoModel; never called for a local directory)",
    "urllib3": "requests",
    "charset-normalizer": "requests",
    "certifi": "requests",
    "sentencepiece": "SenseVoice's tokenizer; the builder trains one",
    "protobuf": "sentencepiece_model_pb2: the builder pads the tokenizer to the model's vocabulary",
    "kaldi-native-fbank": "funasr's WavFrontend fbank (it would use torchaudio otherwise)",
    "cosyvoice-minicpmo": "CosyVoice 2's official code and Matcha-TTS's modules",
    "hyperpyyaml": "cosyvoice2.yaml",
    "ruamel.yaml": "hyperpyyaml's parser",
    "omegaconf": "funasr's configs; the flow's DictConfig",
    "antlr4-python3-runtime": "omegaconf's grammar",
    "conformer": "Matcha's decoder imports ConformerBlock",
    "einops": "Matcha's and CosyVoice's flow decoder",
    "diffusers": "Matcha's transformer blocks (attention, activations)",
    "pillow": "diffusers imports PIL at import",
    "importlib-metadata": "diffusers",
    "zipp": "importlib-metadata",
    "hydra-core": "matcha.utils imports its instantiators (training helpers) on the way to its logger",
    "lightning": "matcha.utils' logger (rank_zero_only) and logging helpers",
    "lightning-utilities": "lightning",
    "torchmetrics": "lightning",
    # matcha.utils' config printer; huggingface-hub >= 1 brings them (typer), older hubs do not
    "rich": "matcha.utils.rich_utils",
    "pygments": "rich",
    "markdown-it-py": "rich",
    "mdurl": "markdown-it-py",
    "onnx": "the builder writes campplus/speech-tokenizer stand-in graphs with onnx.helper",
    "ml-dtypes": "onnx",
}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(names) -> dict[str, metadata.Distribution]:
    """The installed distributions ``names`` need, following their (extra-less) requirements."""
    found, todo = {}, list(names)
    while todo:
        name = todo.pop()
        if _key(name) in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[_key(name)] = dist
        todo += [req.name for req in _requirements(dist)]
    return found


def _files(dist: metadata.Distribution) -> list[Path]:
    """The distribution's installed files, as its wheel would hold them (no .pyc caches)."""
    return [Path(f.locate()) for f in dist.files or []
            if not str(f).endswith(".pyc") and not str(f).startswith("..")]


def wheel_estimate(dist: metadata.Distribution) -> tuple[float, float]:
    """(installed MiB, deflated MiB): a wheel is a zip of the same files, so the deflated size
    estimates it (within a few percent)."""
    raw = packed = 0
    for path in _files(dist):
        if path.is_file():
            data = path.read_bytes()
            raw += len(data)
            packed += len(zlib.compress(data, 6))
    return raw / 2**20, packed / 2**20


def _is_pure(dist: metadata.Distribution) -> bool:
    text = dist.read_text("WHEEL") or ""
    return "Root-Is-Purelib: true" in text


def _requirements(dist: metadata.Distribution):
    """``dist``'s requirements that apply here without extras."""
    from packaging.requirements import Requirement

    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            yield req


def requirement_conflicts() -> list[str]:
    """Requirements of the WHEELS installed here that the installed versions do not meet (on the GPU
    machine: its own torch/transformers/huggingface-hub against what these wheels were pinned with)."""
    conflicts = []
    for name in WHEELS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            for req in _requirements(metadata.distribution(name)):
                with contextlib.suppress(metadata.PackageNotFoundError):
                    have = metadata.version(req.name)
                    if req.specifier and not req.specifier.contains(have, prereleases=True):
                        conflicts.append(f"{name} needs {req}, found {have}")
    return conflicts


def _installed_wheels() -> list[str]:
    """WHEELS, all of which this venv must have, since their sizes and the bare run come from it."""
    missing = [name for name in WHEELS if not _has_dist(name)]
    if missing:
        raise SystemExit(f"this venv lacks {', '.join(missing)}: pip install --no-deps {' '.join(missing)}")
    return list(WHEELS)


def _has_dist(name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def plan() -> dict:
    """The wheels to carry to the GPU machine, their sizes, and how to fetch and install them."""
    base = requirement_closure(BASE)
    rows, total = [], 0.0
    for name in _installed_wheels():
        why = WHEELS[name]
        dist = metadata.distribution(name)
        raw, packed = wheel_estimate(dist)
        total += packed
        on_base = [str(r) for r in _requirements(dist) if _key(r.name) in base and r.specifier]
        rows.append({"name": dist.metadata["Name"], "version": dist.version, "why": why,
                     "pure_python": _is_pure(dist), "installed_mib": round(raw, 2),
                     "wheel_mib_estimate": round(packed, 2), "needs_of_base": on_base})
    repo = sum(p.stat().st_size for p in _tracked_files()) / 2**20
    pins = " ".join(f"{r['name']}=={r['version']}" for r in rows)
    binary = [r["name"] for r in rows if not r["pure_python"]]
    return {
        "base": {"assumed_installed": list(BASE),
                 "with_here": {k: d.version for k, d in sorted(base.items())}},
        "wheels": rows,
        "wheels_mib_estimate": round(total, 1),
        "repository_mib": round(repo, 1),
        "upload_limit_mib": UPLOAD_LIMIT_MIB,
        "fits_upload": total + repo < UPLOAD_LIMIT_MIB,
        "stand_ins": {name: why for name, (why, _, _) in STAND_INS.items()},
        "not_needed": "the stand-ins' packages; ray and vllm (the LLM stage runs through transformers)",
        # pip wheel, not download: antlr4-python3-runtime 4.9.3 is an sdist only, built here
        "fetch_here": f"pip wheel --no-deps -w gpu_wheels {pins}",
        "binary_wheels": (f"{', '.join(binary)} are built for this Python "
                          f"({platform.python_version()}); for another, add --only-binary=:all: "
                          "--python-version X.Y --platform manylinux2014_x86_64 (after pip wheel has "
                          "built antlr4's pure wheel)"),
        "install_there": "pip install --no-deps --no-index gpu_wheels/*.whl",
        "check_there": "the JSON's machine.requirement_conflicts lists wheels the machine's own "
                       "packages do not satisfy (diffusers wants huggingface-hub >= 1.32, i.e. "
                       "transformers 5's)",
        "verify_here": ("python -m load_tests.gpu_check --bare --size tiny --device cpu --batches 1 "
                        "--dtype float32: the check in a python that sees only the base and these"),
    }


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    return [ROOT / name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def bare_site(dest: Path) -> Path:
    """A folder of links to only BASE's closure and WHEELS (code and .dist-info), as on the GPU
    machine: a ``python -S`` with it on PYTHONPATH sees nothing else of this venv."""
    dists = requirement_closure(BASE)
    dists.update({_key(name): metadata.distribution(name) for name in _installed_wheels()})
    for dist in dists.values():
        site = Path(dist.locate_file(""))
        for path in _files(dist):
            top = path.relative_to(site).parts[0] if path.is_relative_to(site) else None
            if top and top != "bin" and not (dest / top).exists():
                (dest / top).symlink_to(site / top)
    return dest


def run_bare(argv: list[str]) -> int:
    """This check again in a ``python -S`` that sees only what the GPU machine would have."""
    with tempfile.TemporaryDirectory(prefix="gpu_check-site-") as tmp:
        site = bare_site(Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
        rest = [a for a in argv if a != "--bare"]
        return subprocess.run([sys.executable, "-S", "-m", "load_tests.gpu_check", *rest],
                              cwd=ROOT, env=env).returncode


# ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None):
    def int_list(text: str) -> list[int]:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
        if not values or values[0] < 1:
            raise argparse.ArgumentTypeError("batch sizes are positive integers")
        return values if values[0] == 1 else [1] + values  # batch 1 is the baseline

    def stage_list(text: str) -> list[str]:
        stages = [s.strip() for s in text.split(",") if s.strip()]
        if not stages or set(stages) - set(STAGES):
            raise argparse.ArgumentTypeError(f"stages are among {','.join(STAGES)}")
        return stages

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", type=stage_list, default=list(DEFAULT_STAGES),
                   help="among asr,tts,llm,avatar (default asr,tts,llm)")
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--batches", type=int_list, default=[1, 4, 16, 64],
                   help="batch sizes (concurrent streams for tts); 1 is always added")
    p.add_argument("--dtype", choices=DTYPES, default="float16")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per batch after a warm-up")
    p.add_argument("--stage-budget-s", type=float, default=120.0,
                   help="skip larger batches that would take a stage past this")
    p.add_argument("--work", help="where to build the models (kept, and reused by a later run); "
                                  "a temporary folder otherwise")
    p.add_argument("--out", help="also write the JSON document here")
    p.add_argument("--plan", action="store_true", help="print the wheels the GPU machine needs")
    p.add_argument("--bare", action="store_true",
                   help="run with only torch, transformers and the --plan wheels visible")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.plan:
        print(json.dumps(plan(), indent=2, ensure_ascii=False))
        return 0
    if args.bare:
        return run_bare(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # CosyVoice wraps every sentence in a progress bar
    with stdout_to_stderr():
        doc, ok = check(args)
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""A random-weight SenseVoiceSmall in its released directory layout, for the ``sensevoice`` ASR backend.

``build(dest, "tiny")`` writes a model that runs in milliseconds on a CPU (encoder width 32, 2 + 1
SAN-M blocks, 256 tokens); ``build(dest, "full")`` writes SenseVoiceSmall's released shape (width 512,
50 + 20 SAN-M blocks, FFN 2048, CTC over 25,055 tokens: ~234 M parameters, a ~0.94 GB model.pt) for
the GPU check. Both load with ``funasr.AutoModel(model=dest)``: the files and names are those of
``iic/SenseVoiceSmall`` (config.yaml, configuration.json, model.pt, am.mvn,
chn_jpn_yue_eng_ko_spectok.bpe.model); only the numbers differ.

The tokenizer is a SentencePiece BPE model trained here on a generated corpus of English, Chinese,
Japanese and Korean, with every tag SenseVoice emits (language, emotion, audio event, ITN) as a
user-defined symbol, so a tag decodes to exactly ``<|HAPPY|>`` etc. It is padded with single CJK
characters to the model's vocabulary size (the CTC output width must equal it). Inference never uses
the tag ids hard-coded in funasr's ``SenseVoiceSmall`` (``lid_int_dict``, ``textnorm_int_dict``,
``emo_dict``: training targets and ``ban_emo_unk``), so the tiny vocabulary can be small; the full
build moves those tags to the released ids (zh 24884 ... woitn 25017), the other tags next to them.

Weights are PyTorch's default initialisation from a fixed seed, except that the CTC output bias of the
tag tokens is raised (``tag_bias``): untouched, the random model never emits a tag; so it emits
random text with tags among it in most utterances (a trained one emits four leading tags in every
one). ``am.mvn`` holds plausible fixed statistics.

    python -m load_tests.random_models.sensevoice DEST [--size tiny|full]
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from load_tests.random_models import cli

LANGUAGES = ["zh", "en", "yue", "ja", "ko", "nospeech"]
EMOTIONS = ["HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN"]
EVENTS = ["Speech", "BGM", "Laughter", "Applause", "Cry", "Sneeze", "Breath", "Cough", "Event_UNK"]
ITN = ["withitn", "woitn"]
TAGS = [f"<|{t}|>" for t in LANGUAGES + EMOTIONS + EVENTS + ITN]

# Ids fixed in funasr/models/sense_voice/model.py (lid_int_dict, textnorm_int_dict, emo_dict).
RELEASED_IDS = {
    "<|zh|>": 24884, "<|en|>": 24885, "<|yue|>": 24888, "<|ja|>": 24892, "<|ko|>": 24896,
    "<|nospeech|>": 24992, "<|HAPPY|>": 25001, "<|SAD|>": 25002, "<|ANGRY|>": 25003,
    "<|NEUTRAL|>": 25004, "<|EMO_UNKNOWN|>": 25009, "<|withitn|>": 25016, "<|woitn|>": 25017,
}

# SenseVoiceSmall's released encoder (config.yaml of iic/SenseVoiceSmall) and a tiny one.
# tag_bias: measured so that tags win ~10% of the frames (tags in most utterances, text around them).
FULL = {"output_size": 512, "attention_heads": 4, "linear_units": 2048, "num_blocks": 50,
        "tp_blocks": 20, "vocab_size": 25055, "tag_bias": 0.9}
TINY = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 2,
        "tp_blocks": 1, "vocab_size": 256, "tag_bias": 0.5}
SIZES = {"tiny": TINY, "full": FULL}

N_MELS, LFR_M, LFR_N = 80, 7, 6
INPUT_SIZE = N_MELS * LFR_M  # 560: what WavFrontend hands the encoder
BPE_NAME = "chn_jpn_yue_eng_ko_spectok.bpe.model"

_EN = ("hello how are you today the weather is nice tell me a story please answer friendly voice "
       "avatar talking model random weights speech recognition emotion language event").split()
_ZH = "欢迎大家来体验达摩院推出的语音识别模型今天天气很好我们去公园散步吧"
_JA = "うちのがっこうはべんとうせいですこんにちは"
_KO = "조금만생각을하면서살면훨씬편할거야안녕하세요"


def config(size: str) -> dict:
    """config.yaml of the released model, with ``size``'s encoder."""
    s = SIZES[size]
    return {
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": {
            "output_size": s["output_size"], "attention_heads": s["attention_heads"],
            "linear_units": s["linear_units"], "num_blocks": s["num_blocks"],
            "tp_blocks": s["tp_blocks"], "dropout_rate": 0.1, "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1, "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
            "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm",
        },
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": N_MELS, "frame_length": 25,
                          "frame_shift": 10, "lfr_m": LFR_M, "lfr_n": LFR_N, "cmvn_file": None},
    }


CONFIGURATION = {  # configuration.json: where funasr finds the files, relative to the directory
    "framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"}, "model_name_in_hub": {"ms": "", "hf": ""},
    "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                        "tokenizer_conf": {"bpemodel": BPE_NAME},
                        "frontend_conf": {"cmvn_file": "am.mvn"}},
}


def _corpus(rng: random.Random, lines: int) -> list[str]:
    out = []
    for _ in range(lines):
        kind = rng.randrange(4)
        if kind == 0:
            out.append(" ".join(rng.choice(_EN) for _ in range(rng.randint(3, 10))))
        else:
            chars = (_ZH, _JA, _KO)[kind - 1]
            out.append("".join(rng.choice(chars) for _ in range(rng.randint(4, 16))))
    return out


def write_tokenizer(path: Path, vocab_size: int, place_released_ids: bool, seed: int = 0) -> None:
    """Train a BPE model with the tags as user-defined symbols, pad it with CJK characters to exactly
    ``vocab_size`` pieces and, if asked, move the tags funasr's code knows by id to those ids."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(_corpus(rng, 2000)) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "m"), model_type="bpe",
            vocab_size=min(vocab_size, 200), hard_vocab_limit=False, character_coverage=1.0,
            user_defined_symbols=TAGS, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            num_threads=1, minloglevel=2)
        model = pb.ModelProto()
        model.ParseFromString((Path(tmp) / "m.model").read_bytes())

    Piece = pb.ModelProto.SentencePiece
    pieces = [(p.piece, p.score, p.type) for p in model.pieces]
    have = {p[0] for p in pieces}
    lowest = min(p[1] for p in pieces)
    code = 0x4E00  # CJK Unified Ideographs, as most of the released vocabulary
    while len(pieces) < vocab_size:
        ch = chr(code)
        code += 1
        if ch not in have:
            pieces.append((ch, lowest - len(pieces), Piece.NORMAL))
    if len(pieces) > vocab_size:
        raise ValueError(f"the trained tokenizer has {len(pieces)} pieces, more than {vocab_size}")
    if place_released_ids:
        by_piece = {p[0]: p for p in pieces}
        fixed = dict(RELEASED_IDS)
        free = [i for i in range(24884, vocab_size) if i not in fixed.values()]
        for tag in TAGS:  # the others next to them, in order
            if tag not in fixed:
                fixed[tag] = free.pop(0)
        rest = iter(p for p in pieces if p[0] not in fixed)
        by_id = {i: by_piece[t] for t, i in fixed.items()}
        pieces = [by_id[i] if i in by_id else next(rest) for i in range(vocab_size)]
    del model.pieces[:]
    for text, score, kind in pieces:
        model.pieces.add(piece=text, score=score, type=kind)
    model.trainer_spec.vocab_size = vocab_size
    path.write_bytes(model.SerializeToString())


def write_cmvn(path: Path, seed: int = 0) -> None:
    """am.mvn in Kaldi nnet text form: a shift (-mean) and a scale (1/std) per LFR feature."""
    rng = random.Random(seed)
    shift = " ".join(f"{-rng.uniform(8.0, 16.0):.6f}" for _ in range(INPUT_SIZE))
    scale = " ".join(f"{rng.uniform(0.15, 0.35):.6f}" for _ in range(INPUT_SIZE))
    path.write_text(
        "<Nnet>\n<Splice> {0} {0}\n[ 0 ]\n"
        "<AddShift> {0} {0}\n<LearnRateCoef> 0 [ {1} ]\n"
        "<Rescale> {0} {0}\n<LearnRateCoef> 0 [ {2} ]\n</Nnet>\n".format(INPUT_SIZE, shift, scale),
        encoding="utf-8")


def write_weights(path: Path, cfg: dict, tokenizer: Path, tag_bias: float, seed: int = 0) -> None:
    """model.pt: the state dict of funasr's own SenseVoiceSmall built from ``cfg``, CTC as wide as
    ``tokenizer``'s vocabulary, its tags favoured by ``tag_bias``."""
    import sentencepiece as spm
    import torch
    from funasr.models.sense_voice.model import SenseVoiceSmall

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    torch.manual_seed(seed)
    model = SenseVoiceSmall(encoder=cfg["encoder"], encoder_conf=cfg["encoder_conf"],
                            input_size=INPUT_SIZE, vocab_size=sp.get_piece_size(),
                            **cfg["model_conf"])
    with torch.no_grad():
        model.ctc.ctc_lo.bias[[sp.piece_to_id(t) for t in TAGS]] += tag_bias
    torch.save(model.state_dict(), path)


def build(dest: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write the model directory ``dest`` (created if missing) and return it."""
    import yaml

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cfg = config(size)
    vocab = SIZES[size]["vocab_size"]
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    (dest / "configuration.json").write_text(json.dumps(CONFIGURATION, indent=2), encoding="utf-8")
    write_cmvn(dest / "am.mvn", seed)
    write_tokenizer(dest / BPE_NAME, vocab, place_released_ids=vocab > max(RELEASED_IDS.values()),
                    seed=seed)
    write_weights(dest / "model.pt", cfg, dest / BPE_NAME, SIZES[size]["tag_bias"], seed)
    return dest


def main(argv: list[str] | None = None) -> int:
    return cli(__doc__, SIZES, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())

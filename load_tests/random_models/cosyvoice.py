"""A random-weight CosyVoice 2 in its released directory layout, for the ``cosyvoice`` TTS backend.

``build(dest, "tiny")`` writes a model that streams on two CPU cores; ``build(dest, "full")`` writes
CosyVoice2-0.5B's released shapes (Qwen2.5-0.5B LLM, 6561 speech tokens, flow encoder 6 + 4 blocks,
flow decoder 256 channels with 4 + 12 blocks, HiFT 512 channels) for the GPU check. Both load with
``CosyVoice2(dest)``: the files are those of ``iic/CosyVoice2-0.5B`` (cosyvoice2.yaml, llm.pt,
flow.pt, hift.pt, campplus.onnx, speech_tokenizer_v2.onnx, CosyVoice-BlankEN/), plus an
``spk2info.pt`` with SFT speakers (the release ships none; CosyVoice-300M-SFT's is often copied in).

- ``cosyvoice2.yaml`` is the release's inference config with ``size``'s numbers. The flow encoder
  stays 512 wide in every size: ``UpsampleConformerEncoder`` hard-codes 512 channels for its
  pre-lookahead and upsampling layers.
- ``CosyVoice-BlankEN`` is a Qwen2 in Hugging Face layout (``qwen_pretrain_path``; its weights are
  replaced by llm.pt) with a byte-level BPE tokenizer trained here on English and Chinese, so any text
  tokenizes; CosyVoice's ``QwenTokenizer`` adds its specials on top, inside the model's vocabulary.
- ``campplus.onnx`` and ``speech_tokenizer_v2.onnx`` are stand-ins built with ``onnx.helper`` that
  take what CosyVoice's frontend feeds them (fbank [1, T, 80] -> embedding [1, 192]; whisper mel
  [1, 128, T] + length [1] -> tokens [1, T/4] at 25 Hz) and compute a fixed function of it.
- Weights are PyTorch's default initialisation from a fixed seed, except the LLM's output bias on
  its stop and filler tokens (``-STOP_BIAS``): a random LLM otherwise stops at a random step, at
  once or never. With it the LLM never stops by itself and every sentence runs to CosyVoice's own
  cap, ``max_token_text_ratio`` (20) speech tokens per text token: 0.8 s of audio per text token,
  the same length for the same text, so tests count chunks.

    python -m load_tests.random_models.cosyvoice DEST [--size tiny|full]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SPEAKERS = ("中文女", "英文女")  # spk2info.pt: names as in CosyVoice-300M-SFT
STOP_BIAS = 1e4
SAMPLE_RATE = 24000

# Qwen2.5-0.5B (CosyVoice-BlankEN) and CosyVoice2-0.5B's flow/HiFT; TINY keeps what code fixes.
FULL = {
    "qwen": {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
             "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
             "max_position_embeddings": 32768, "tie_word_embeddings": True},
    "speech_tokens": 6561,
    "encoder": {"attention_heads": 8, "linear_units": 2048, "num_blocks": 6},
    "estimator": {"channels": 256, "attention_head_dim": 64, "n_blocks": 4, "num_mid_blocks": 12,
                  "num_heads": 8},
    "hift": {"base_channels": 512, "cond_channels": 512},
}
TINY = {
    "qwen": {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 4096, "tie_word_embeddings": True},
    "speech_tokens": 512,
    "encoder": {"attention_heads": 4, "linear_units": 256, "num_blocks": 1},
    "estimator": {"channels": 64, "attention_head_dim": 16, "n_blocks": 1, "num_mid_blocks": 1,
                  "num_heads": 2},
    "hift": {"base_channels": 32, "cond_channels": 32},
}
SIZES = {"tiny": TINY, "full": FULL}
TOKENIZER_VOCAB = 900  # BPE pieces; QwenTokenizer's ~20 specials go above them

_EN = ("hello how are you today I am fine thank you the weather is nice what would you like to talk "
       "about tell me a story please answer in one short sentence friendly avatar voice conversation "
       "good morning evening night yes no maybe sure of course let us begin again why when where who "
       "speech synthesis streaming random weights model test").split()
_ZH = list("你好今天天气很好我们聊聊吧请用中文回答一句话谢谢再见早上晚上朋友问题可以是的不是为什么什么时候"
           "在哪里谁说故事声音对话友好头像欢迎学习工作吃饭喝水合成语音流式测试")


def config_yaml(size: str) -> str:
    """cosyvoice2.yaml of the release (inference part) with ``size``'s numbers."""
    s = SIZES[size]
    q, e, d, h = s["qwen"], s["encoder"], s["estimator"], s["hift"]
    return f"""\
# {size} random-weight CosyVoice 2 (load_tests/random_models/cosyvoice.py); layout of CosyVoice2-0.5B.
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]

sample_rate: {SAMPLE_RATE}
llm_input_size: {q["hidden_size"]}
llm_output_size: {q["hidden_size"]}
spk_embed_dim: 192
qwen_pretrain_path: ''
token_frame_rate: 25
token_mel_ratio: 2
chunk_size: 25
num_decoding_left_chunks: -1

llm: !new:cosyvoice.llm.llm.Qwen2LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: {s["speech_tokens"]}
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [5, 15]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec
    input_size: 512
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: {s["speech_tokens"]}
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: 512
        attention_heads: {e["attention_heads"]}
        linear_units: {e["linear_units"]}
        num_blocks: {e["num_blocks"]}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: 512
        use_cnn_module: False
        macaron_style: False
        static_chunk_size: !ref <chunk_size>
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [{d["channels"]}]
            dropout: 0.0
            attention_head_dim: {d["attention_head_dim"]}
            n_blocks: {d["n_blocks"]}
            num_mid_blocks: {d["num_mid_blocks"]}
            num_heads: {d["num_heads"]}
            act_fn: 'gelu'
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: {h["base_channels"]}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: {h["cond_channels"]}

get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
allowed_special: 'all'
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: 8000
    center: False
"""


def _corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 2:
            chars = (rng.choice(_ZH) for _ in range(rng.randint(4, 24)))
            lines.append("".join(chars) + rng.choice("。？！，"))
        else:
            lines.append(" ".join(rng.choice(_EN) for _ in range(rng.randint(3, 16))) + rng.choice(".?!,"))
    return lines + [" 0123456789 ", "A-Z a-z: ; ' \" ( ) [ ] { }"]


def write_blank_en(dest: Path, size: str, seed: int = 0) -> None:
    """CosyVoice-BlankEN: a random Qwen2 (config.json + model.safetensors) and its tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(seed=seed), trainer=trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None,
        "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False,
        "model_max_length": 32768}, indent=2))
    q = SIZES[size]["qwen"]
    assert q["vocab_size"] >= tok.get_vocab_size() + 64, "QwenTokenizer's specials must fit"
    cfg = Qwen2Config(**q, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
                      use_sliding_window=False, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    # bfloat16 on disk, as released: transformers 5 then loads it as bfloat16 (dtype="auto") beside
    # CosyVoice's float32 layers, which the backend has to undo.
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(dest))


def _onnx_campplus(path: Path, seed: int) -> None:
    """fbank [1, T, 80] -> [1, 192]: mean over time, then a fixed random projection."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((80, 192)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["output"])],
        "campplus_stand_in",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", 80])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 192])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], np.int64), "axes")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))


def _onnx_speech_tokenizer(path: Path, speech_tokens: int) -> None:
    """whisper log-mel [1, 128, T] + length [1] -> tokens [1, ceil(T/4)] (25 Hz, as the real one)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = {"axes1": np.array([1], np.int64), "starts": np.array([0], np.int64),
         "ends": np.array([2**62], np.int64), "axes2": np.array([1], np.int64),
         "steps": np.array([4], np.int64), "scale": np.array(997.0, np.float32),
         "vocab": np.array(speech_tokens, np.int64)}
    nodes = [
        helper.make_node("ReduceSum", ["feats", "axes1"], ["energy"], keepdims=0),  # [1, T]
        helper.make_node("Slice", ["energy", "starts", "ends", "axes2", "steps"], ["every4"]),
        helper.make_node("Abs", ["every4"], ["pos"]),
        helper.make_node("Mul", ["pos", "scale"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["ints"], to=TensorProto.INT64),
        helper.make_node("Mod", ["ints", "vocab"], ["tokens"]),
    ]
    graph = helper.make_graph(
        nodes, "speech_tokenizer_v2_stand_in",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
         helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1])],
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, "N"])],
        [numpy_helper.from_array(v, k) for k, v in c.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))


def build(dest: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random CosyVoice 2 of ``size`` into ``dest`` and return ``dest``."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "cosyvoice2.yaml").write_text(config_yaml(size), encoding="utf-8")
    write_blank_en(dest / "CosyVoice-BlankEN", size, seed)
    with open(dest / "cosyvoice2.yaml", encoding="utf-8") as f:
        configs = load_hyperpyyaml(f, overrides={"qwen_pretrain_path": str(dest / "CosyVoice-BlankEN")})
    torch.manual_seed(seed)
    # float32 like the released llm.pt (the Qwen2 inside loaded as bfloat16, see write_blank_en)
    llm, flow, hift = configs["llm"].float(), configs["flow"], configs["hift"]
    with torch.no_grad():
        # The last three outputs are stop (speech_token_size) and two fillers (see the docstring).
        llm.llm_decoder.bias[-3:] = -STOP_BIAS
    for name, module in (("llm", llm), ("flow", flow), ("hift", hift)):
        torch.save(module.state_dict(), dest / f"{name}.pt")
    _onnx_campplus(dest / "campplus.onnx", seed)
    _onnx_speech_tokenizer(dest / "speech_tokenizer_v2.onnx", SIZES[size]["speech_tokens"])
    gen = torch.Generator().manual_seed(seed)
    torch.save({name: {"embedding": torch.randn(1, 192, generator=gen)} for name in SPEAKERS},
               dest / "spk2info.pt")
    return dest


def parameter_count(dest: Path) -> dict[str, int]:
    """Parameters per weight file (tied tensors once), for reports."""
    import torch

    counts = {}
    for name in ("llm", "flow", "hift"):
        tensors = torch.load(dest / f"{name}.pt", map_location="cpu", weights_only=True).values()
        counts[name] = sum({t.data_ptr(): t.numel() for t in tensors}.values())
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    a = ap.parse_args(argv)
    dest = build(a.dest, a.size)
    print(dest, parameter_count(dest))


if __name__ == "__main__":
    main()

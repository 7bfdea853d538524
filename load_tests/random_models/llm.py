"""A random-weight Qwen2 (or Llama) chat model in Hugging Face layout, for the vLLM backend.

``build(dest, "tiny")`` writes a model small enough for vLLM on two CPU cores (hidden 256, head_dim
64: vLLM's CPU attention rejects head_dim 16); ``build(dest, "full")`` writes Qwen2.5-1.5B-Instruct's
released shape (vocab 151936, 28 layers, hidden 1536, bf16, ~3.1 GB) for the GPU check.

The tokenizer is a byte-level BPE trained here with the ``tokenizers`` library on a generated corpus
of English and Chinese, so any text (CJK included) round-trips; its specials and chat template follow
Qwen2.5 (ChatML: ``<|im_start|>role\\n...<|im_end|>``, eos ``<|im_end|>``). Its vocabulary is small;
the model's embedding rows past it are simply never used, as in the real Qwen2.5 (151936 rows for
151665 tokens).

The output rows of the special tokens, and of ids past the tokenizer's vocabulary, are zero (in the
untied head of ``tiny``, in the tied embedding of ``full``): greedy decoding then never picks eos (a
reply runs to its max_tokens, which the tests measure) nor an id without text. (vLLM decodes such an
id to "" without error.) Other weights are N(0, 0.02) from a fixed seed; norms are 1.

    python -m load_tests.random_models.llm DEST [--size tiny|full] [--arch qwen2|llama]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
PAD, BOS, EOS = 0, 0, 2  # Qwen2.5: pad = bos = <|endoftext|>, eos (chat) = <|im_end|>

# Qwen2.5's template without its tool-calling branches; the default system line is Qwen's own.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2.5-1.5B-Instruct's config.json (the released shape).
QWEN25_15B = {
    "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "max_window_layers": 21, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16",
}
TINY = {
    "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
    "max_window_layers": 2, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
    "tie_word_embeddings": False, "torch_dtype": "float32",
}
SIZES = {"tiny": TINY, "full": QWEN25_15B}

_EN = ("hello how are you today I am fine thank you the weather is nice what would you like to talk "
       "about tell me a story please answer in one short sentence friendly avatar voice conversation "
       "good morning evening night yes no maybe sure of course let us begin again why when where who "
       "Do not use lists markdown or emojis You are a talking in spoken simple sentences The user speaks "
       "always answer in Chinese Japanese Korean Cantonese English French German Spanish").split()
_ZH = list("你好今天天气很好我们聊聊吧请用中文回答一句话谢谢再见早上晚上朋友问题可以是的不是为什么什么时候"
           "在哪里谁说故事简体粵語日本語한국어声音对话友好头像欢迎学习工作吃饭喝水")


def corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    """Generated English and Chinese lines (plus the chat markup) to train the BPE on."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 3 == 2:
            chars = (rng.choice(_ZH) for _ in range(rng.randint(4, 24)))
            lines.append("".join(chars) + rng.choice("。？！，"))
        else:
            words = [rng.choice(_EN) for _ in range(rng.randint(3, 16))]
            lines.append(" ".join(words) + rng.choice(".?!,"))
    lines += ["system\nuser\nassistant\n", "\n\n", " 123 4567 89 0 ", "A-Z a-z: ; ' \" ( ) [ ] { }"]
    return lines


def train_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE (GPT-2/Qwen style: every byte is a token, so nothing is unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    for i, text in enumerate(SPECIALS):
        assert tok.token_to_id(text) == i, (text, tok.token_to_id(text))
    return tok


def _config(arch: str, shape: dict) -> dict:
    common = {
        "bos_token_id": BOS, "eos_token_id": EOS, "hidden_act": "silu", "initializer_range": 0.02,
        "attention_dropout": 0.0, "use_cache": True, "transformers_version": "4.43.1",
        **{k: v for k, v in shape.items() if k not in ("max_window_layers",)},
    }
    if arch == "qwen2":
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **common,
                "max_window_layers": shape["max_window_layers"], "sliding_window": None,
                "use_sliding_window": False}
    if arch == "llama":
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common,
                "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
                "head_dim": shape["hidden_size"] // shape["num_attention_heads"]}
    raise ValueError(f"arch must be qwen2 or llama, got {arch!r}")


def _weights(cfg: dict, n_tokens: int, seed: int) -> dict:
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg["torch_dtype"]]
    gen = torch.Generator().manual_seed(seed)
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    bias = cfg["model_type"] == "qwen2"  # Qwen2 has q/k/v biases, Llama none

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(dtype)

    def ones(n):
        return torch.ones(n, dtype=dtype)

    def no_output(rows):  # see the module docstring
        rows[:len(SPECIALS)] = 0
        rows[n_tokens:] = 0
        return rows

    embed = rand(v, h)
    w = {"model.embed_tokens.weight": no_output(embed) if cfg["tie_word_embeddings"] else embed,
         "model.norm.weight": ones(h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = ones(h)
        w[p + "post_attention_layernorm.weight"] = ones(h)
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            w[p + f"self_attn.{name}.weight"] = rand(rows, h)
            if bias:
                w[p + f"self_attn.{name}.bias"] = rand(rows)
        w[p + "self_attn.o_proj.weight"] = rand(h, q)
        w[p + "mlp.gate_proj.weight"] = rand(inter, h)
        w[p + "mlp.up_proj.weight"] = rand(inter, h)
        w[p + "mlp.down_proj.weight"] = rand(h, inter)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = no_output(rand(v, h))
    return w


def build(dest: Path, size: str = "tiny", arch: str = "qwen2", seed: int = 0) -> Path:
    """Write a random ``arch`` chat model of ``size`` into ``dest`` and return ``dest``."""
    from safetensors.torch import save_file

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shape = SIZES[size]
    # Tiny: the vocabulary is the tokenizer's; full: the tokenizer fills its low ids only.
    tok = train_tokenizer(min(shape["vocab_size"], 4096), seed=seed)
    tok.save(str(dest / "tokenizer.json"))
    cfg = _config(arch, shape)
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    (dest / "generation_config.json").write_text(json.dumps({
        "bos_token_id": BOS, "pad_token_id": PAD, "eos_token_id": [EOS, PAD], "do_sample": True,
        "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
        "transformers_version": "4.43.1"}, indent=2))
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": shape["max_position_embeddings"],
        "eos_token": SPECIALS[EOS], "pad_token": SPECIALS[PAD], "bos_token": None,
        "unk_token": None, "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "add_bos_token": False, "add_eos_token": False, "errors": "replace",
        "added_tokens_decoder": {str(i): {"content": t, "special": True, "lstrip": False,
                                          "rstrip": False, "normalized": False, "single_word": False}
                                 for i, t in enumerate(SPECIALS)},
        "chat_template": CHAT_TEMPLATE,
    }, indent=2, ensure_ascii=False))
    (dest / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": SPECIALS[EOS], "pad_token": SPECIALS[PAD],
         "additional_special_tokens": SPECIALS[1:]}, indent=2))
    save_file(_weights(cfg, tok.get_vocab_size(), seed), str(dest / "model.safetensors"),
              metadata={"format": "pt"})
    return dest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--arch", choices=["qwen2", "llama"], default="qwen2")
    a = ap.parse_args(argv)
    print(build(a.dest, a.size, a.arch))


if __name__ == "__main__":
    main()

"""A random-weight MuseTalk 1.5 in its released directory layout, for the ``musetalk`` avatar backend.

The layout is upstream's ``models/`` folder as ``download_weights.sh`` makes it (and ``avatar-chat
models fetch musetalk``), the parts MuseTalk 1.5's real-time inference reads:

    musetalkV15/musetalk.json   UNet2DConditionModel config (diffusers)
    musetalkV15/unet.pth        its state dict (torch.save)
    sd-vae/config.json, sd-vae/diffusion_pytorch_model.bin          stabilityai/sd-vae-ft-mse
    whisper/config.json, whisper/pytorch_model.bin, whisper/preprocessor_config.json  openai/whisper-tiny

``build(dest, "full")`` writes the released shapes (UNet 320/640/1280/1280 with cross-attention 384,
the SD VAE 128/256/512/512, Whisper tiny 384 wide with 4 + 4 layers: ~0.9 B parameters, a ~3.7 GB
directory) for the GPU check; ``build(dest, "tiny")`` writes the same architectures shrunk so a CPU
runs a face in milliseconds (the UNet keeps 8 input and 4 output channels and cross-attends to the
Whisper width; the VAE keeps its 8x downsampling, so 256x256 crops still give 32x32 latents; Whisper
keeps 80 mel bins and 1500 positions, so 30 s windows). Weights are PyTorch's (and diffusers')
default initialisation from a fixed seed, except two gains that make the audio drive the face:
untouched, a random Whisper's features are mostly its positional embedding (two different sounds
differ by 4 %) and a random UNet's cross-attention barely moves its output, so every sound would
draw nearly the same face (0.1 of 255 apart). Whisper's input convolutions are scaled by
``WHISPER_CONV_GAIN`` and the UNet's cross-attention output by ``CROSS_ATTENTION_GAIN``: different
sounds then draw faces ~10 levels apart, so tests can tell whose audio a face was drawn from.

    python -m load_tests.random_models.musetalk DEST [--size tiny|full]
"""

from __future__ import annotations

import json
from pathlib import Path

from load_tests.random_models import cli

# musetalkV15/musetalk.json of TMElyralab/MuseTalk, verbatim.
UNET_FULL = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0.dev0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# Attention only below full latent resolution (and in the mid block), so a CPU runs it fast.
UNET_TINY = {**UNET_FULL, "block_out_channels": [32, 32], "layers_per_block": 1,
             "norm_num_groups": 8, "cross_attention_dim": 32,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}

# sd-vae-ft-mse's config.json.
VAE_FULL = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "out_channels": 3, "sample_size": 256, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
VAE_TINY = {**VAE_FULL, "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1,
            "norm_num_groups": 4}

# openai/whisper-tiny's architecture (transformers WhisperConfig fields).
WHISPER_FULL = {"d_model": 384, "encoder_layers": 4, "decoder_layers": 4,
                "encoder_attention_heads": 6, "decoder_attention_heads": 6,
                "encoder_ffn_dim": 1536, "decoder_ffn_dim": 1536, "num_mel_bins": 80,
                "max_source_positions": 1500, "max_target_positions": 448, "vocab_size": 51865}
WHISPER_TINY = {**WHISPER_FULL, "d_model": 32, "encoder_layers": 2, "decoder_layers": 1,
                "encoder_attention_heads": 2, "decoder_attention_heads": 2,
                "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_target_positions": 32}

WHISPER_CONV_GAIN = 8.0
CROSS_ATTENTION_GAIN = 8.0

SIZES = {"tiny": (UNET_TINY, VAE_TINY, WHISPER_TINY), "full": (UNET_FULL, VAE_FULL, WHISPER_FULL)}


def build(dest: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write the model directory ``dest`` (created if missing) and return it."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    unet_cfg, vae_cfg, whisper_cfg = SIZES[size]
    dest = Path(dest)
    for sub in ("musetalkV15", "sd-vae", "whisper"):
        (dest / sub).mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    (dest / "musetalkV15" / "musetalk.json").write_text(json.dumps(unet_cfg, indent=2), encoding="utf-8")
    unet = UNet2DConditionModel.from_config(unet_cfg)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".attn2.to_out.0." in name:  # cross-attention (to the audio) back into the image
                p.mul_(CROSS_ATTENTION_GAIN)
    torch.save(unet.state_dict(), dest / "musetalkV15" / "unet.pth")
    del unet

    (dest / "sd-vae" / "config.json").write_text(json.dumps(vae_cfg, indent=2), encoding="utf-8")
    vae = AutoencoderKL.from_config(vae_cfg)
    torch.save(vae.state_dict(), dest / "sd-vae" / "diffusion_pytorch_model.bin")
    del vae

    config = WhisperConfig(**whisper_cfg)
    config.save_pretrained(dest / "whisper")
    whisper = WhisperModel(config)
    with torch.no_grad():
        for conv in (whisper.encoder.conv1, whisper.encoder.conv2):
            conv.weight.mul_(WHISPER_CONV_GAIN)
    torch.save(whisper.state_dict(), dest / "whisper" / "pytorch_model.bin")
    WhisperFeatureExtractor(feature_size=whisper_cfg["num_mel_bins"]).save_pretrained(dest / "whisper")
    return dest


def main(argv: list[str] | None = None) -> int:
    return cli(__doc__, SIZES, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())

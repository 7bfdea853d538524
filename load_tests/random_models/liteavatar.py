"""A random-weight LiteAvatar in the layout ``avatar-chat models fetch liteavatar`` gives, for the
``liteavatar`` avatar backend.

What the backend reads, and what stands in for it here:

- ``lite_avatar_weights/model.pb``: Paraformer-large's checkpoint, a torch state dict. Here a
  SAN-M encoder's (funasr's ``SANMEncoder`` parameter names, prefixed ``encoder.``, plus one
  predictor key the backend must ignore) from a fixed seed.
- ``config.yaml`` and ``am.mvn``: Paraformer's encoder and frontend settings and its CMVN
  statistics (plausible fixed numbers, as for SenseVoice).
- ``lite_avatar_weights/model_1.onnx``: the audio-to-mouth model, built with ``onnx.helper`` with
  LiteAvatar's inputs and outputs (``input_au`` (1, 30, blocks, width) speech features,
  ``input_ph`` (1, 30, 2), ``input_sp`` (1,) int64, ``w`` (1,) -> ``output`` (1, 30, 32) mouth
  parameters, ``feat`` (1, 30, hidden)); inside, a random two-layer perceptron.
- the avatar ``20250408/sample_data/``: ``net_encode.pt`` (TorchScript: a (1, 3, 384, 384) image in
  [-1, 1] -> a code) and ``net_decode.pt`` (TorchScript: (code, (1, 32) parameters) -> a
  (1, 3, 384, 384) face in [-1, 1]), small random conv nets; ``bg_video.mp4`` drawn here (a
  gradient, a moving bar and a face-like disc, so every frame differs); ``face_box.txt``
  (``y1 y2 x1 x2``); ``neutral_pose.npy`` (32 parameters); ``ref_frames/ref_00000.jpg`` ... (the
  face box of each background frame).

``tiny`` is a 3-block, 32-wide encoder and a 256x192, 24-frame avatar (runs in milliseconds a frame
on a CPU); ``full`` is Paraformer-large's released encoder (50 blocks, 512 wide, FFN 2048: ~157 M
parameters) and a 960x540, 150-frame avatar, for the GPU check. The real ``feat`` output's width and
the real face networks' internals are not public; their interfaces are what the backend uses.

    python -m load_tests.random_models.liteavatar DEST [--size tiny|full]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from load_tests.random_models import cli
from load_tests.random_models.sensevoice import write_cmvn

AVATAR = "20250408/sample_data"
N_PARAMS, WINDOW, REF_SIZE = 32, 30, 384
N_MELS, LFR_M, LFR_N = 80, 7, 6

FULL = {"output_size": 512, "attention_heads": 4, "linear_units": 2048, "num_blocks": 50,
        "hidden": 256, "width": 960, "height": 540, "frames": 150, "box": (96, 480, 288, 672)}
TINY = {"output_size": 32, "attention_heads": 4, "linear_units": 64, "num_blocks": 3,
        "hidden": 64, "width": 256, "height": 192, "frames": 24, "box": (40, 168, 64, 192)}
SIZES = {"tiny": TINY, "full": FULL}


def config(size: str) -> dict:
    """config.yaml of iic/speech_paraformer-large-...-pytorch, with ``size``'s encoder."""
    s = SIZES[size]
    return {
        "model": "Paraformer",
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "output_size": s["output_size"], "attention_heads": s["attention_heads"],
            "linear_units": s["linear_units"], "num_blocks": s["num_blocks"], "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1, "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
            "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm",
        },
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": N_MELS, "frame_length": 25,
                          "frame_shift": 10, "lfr_m": LFR_M, "lfr_n": LFR_N},
    }


def write_paraformer(path: Path, cfg: dict, seed: int = 0) -> None:
    """model.pb: a SAN-M encoder's state dict under ``encoder.``, and a predictor key.

    The encoder is the backend's own, whose parameter names and shapes are those of funasr's
    ``SANMEncoder`` (tests/production/test_liteavatar.py checks both, and equal outputs): importing
    funasr takes ~17 s of CPU, this takes none."""
    import torch

    from avatarchat.backends.avatar.liteavatar import encoder_module

    torch.manual_seed(seed)
    e = cfg["encoder_conf"]
    encoder = encoder_module({
        "input_size": N_MELS * LFR_M, "output_size": e["output_size"],
        "attention_heads": e["attention_heads"], "linear_units": e["linear_units"],
        "num_blocks": e["num_blocks"], "kernel_size": e["kernel_size"], "sanm_shfit": e["sanm_shfit"]})
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["predictor.cif_output.weight"] = torch.zeros(1, cfg["encoder_conf"]["output_size"])
    torch.save(state, path)


def write_audio_to_mouth(path: Path, blocks: int, width: int, hidden: int, seed: int = 0) -> None:
    """model_1.onnx with LiteAvatar's inputs and outputs; a random perceptron inside."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    flat = blocks * width
    weights = {
        "w_au": rng.normal(0, 1 / np.sqrt(flat), (flat, hidden)),
        "w_ph": rng.normal(0, 0.5, (2, hidden)),
        "b_1": rng.normal(0, 0.1, (hidden,)),
        "w_out": rng.normal(0, 1.5 / np.sqrt(hidden), (hidden, N_PARAMS)),
        "b_out": rng.normal(0, 0.1, (N_PARAMS,)),
    }
    init = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    init.append(numpy_helper.from_array(np.array([1, WINDOW, flat], np.int64), "flat_shape"))
    nodes = [
        helper.make_node("Reshape", ["input_au", "flat_shape"], ["au_flat"]),
        helper.make_node("MatMul", ["au_flat", "w_au"], ["h_au"]),
        helper.make_node("MatMul", ["input_ph", "w_ph"], ["h_ph"]),
        helper.make_node("Add", ["h_au", "h_ph"], ["h_sum"]),
        helper.make_node("Add", ["h_sum", "b_1"], ["h_pre"]),
        helper.make_node("Tanh", ["h_pre"], ["feat"]),
        helper.make_node("MatMul", ["feat", "w_out"], ["o_mm"]),
        helper.make_node("Add", ["o_mm", "b_out"], ["o_pre"]),
        helper.make_node("Mul", ["o_pre", "w"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "audio2mouth",
        inputs=[helper.make_tensor_value_info("input_au", TensorProto.FLOAT, [1, WINDOW, blocks, width]),
                helper.make_tensor_value_info("input_ph", TensorProto.FLOAT, [1, WINDOW, 2]),
                helper.make_tensor_value_info("input_sp", TensorProto.INT64, [1]),
                helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, WINDOW, N_PARAMS]),
                 helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, WINDOW, hidden])],
        initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older onnxruntime releases too
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_face_networks(encode_path: Path, decode_path: Path, seed: int = 0) -> None:
    """net_encode.pt and net_decode.pt: TorchScript with the signatures LiteAvatar calls."""
    import torch
    from torch import nn

    class FaceEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.down1, self.down2 = nn.Conv2d(3, 8, 4, 4), nn.Conv2d(8, 16, 4, 4)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.down2(torch.relu(self.down1(image)))  # (1, 16, 24, 24)

    class FaceDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.mouth = nn.Linear(N_PARAMS, 16)
            self.up1, self.up2 = nn.ConvTranspose2d(16, 8, 4, 4), nn.ConvTranspose2d(8, 3, 4, 4)

        def forward(self, code: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
            x = code + 3.0 * self.mouth(params)[:, :, None, None]
            return torch.tanh(self.up2(torch.relu(self.up1(x))))  # (1, 3, 384, 384)

    torch.manual_seed(seed)
    torch.jit.save(torch.jit.script(FaceEncoder().eval()), str(encode_path))
    torch.jit.save(torch.jit.script(FaceDecoder().eval()), str(decode_path))


def write_avatar(dest: Path, size: str, seed: int = 0) -> None:
    """An avatar directory: background video, face box, reference frames, neutral pose, networks."""
    import cv2

    s = SIZES[size]
    w, h, n = s["width"], s["height"], s["frames"]
    y1, y2, x1, x2 = s["box"]
    (dest / "ref_frames").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w]
    writer = cv2.VideoWriter(str(dest / "bg_video.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, (w, h))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v video here")
    try:
        for i in range(n):
            phase = 2 * np.pi * i / n
            rgb = np.stack([(xx * 255 // w), (yy * 255 // h),
                            np.full_like(xx, int(128 + 100 * np.sin(phase)))], -1).astype(np.uint8)
            bar = int((i / n) * w)
            rgb[:, max(0, bar - 6):bar + 6] = (250, 250, 250)
            cy, cx = (y1 + y2) // 2 + int(4 * np.sin(phase)), (x1 + x2) // 2
            cv2.circle(rgb, (cx, cy), (y2 - y1) // 3, (220, 170, 140), -1)
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            face = cv2.resize(rgb[y1:y2, x1:x2], (REF_SIZE, REF_SIZE))
            cv2.imwrite(str(dest / "ref_frames" / f"ref_{i:05d}.jpg"),
                        cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    (dest / "face_box.txt").write_text(f"{y1} {y2} {x1} {x2}\n", encoding="utf-8")
    rng = np.random.default_rng(seed)
    np.save(dest / "neutral_pose.npy", rng.normal(0, 0.1, N_PARAMS))
    write_face_networks(dest / "net_encode.pt", dest / "net_decode.pt", seed)


def build(dest: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write the model directory ``dest`` (created if missing), its avatar included; return it."""
    import yaml

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    dest = Path(dest)
    (dest / "lite_avatar_weights").mkdir(parents=True, exist_ok=True)
    cfg = config(size)
    s = SIZES[size]
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    write_cmvn(dest / "am.mvn", seed)
    write_paraformer(dest / "lite_avatar_weights" / "model.pb", cfg, seed)
    write_audio_to_mouth(dest / "lite_avatar_weights" / "model_1.onnx", s["num_blocks"],
                         s["output_size"], s["hidden"], seed)
    write_avatar(dest / AVATAR, size, seed)
    return dest


def main(argv: list[str] | None = None) -> int:
    return cli(__doc__, SIZES, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""`avatar-chat`: talk to a running service from the command line, and render replies offline.

    avatar-chat turn --wav question.wav --out reply.mp4 [--timings reply.json]
    avatar-chat turn --text "What is your name?" --out reply.mp4
    avatar-chat speak "What is your name?" question.wav     (make a test utterance, offline)
    avatar-chat info
    avatar-chat cert --host 192.168.1.20 --out certs/   (a self-signed HTTPS certificate for a LAN)
    avatar-chat models list | fetch NAME      (production models' weights, see docs/backends.md)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx

from avatarchat.client import cert, models_cli
from avatarchat.client.turn_client import TurnClient, TurnError


def render_reply(result, pack_name: str | None, out: Path) -> dict:
    """Write the reply's frames with its audio as an MP4: drawn with the avatar pack (motion
    avatars), or as the avatar drew them (``pack_name`` None)."""
    from avatarchat.media_file import write_mp4

    t0 = time.perf_counter()
    if pack_name is None:
        frames = (f.rgb() for f in result.frames())
    else:
        from avatarchat.avatar.pack import AvatarPack
        from avatarchat.avatar.renderer import PortraitRenderer

        renderer = PortraitRenderer(AvatarPack.load(pack_name))
        frames = (renderer.render(m) for m in result.frames())
    write_mp4(out, frames, result.fps, result.audio(), result.sample_rate)
    return {"render_and_encode_s": time.perf_counter() - t0}


def cmd_turn(args) -> int:
    client = TurnClient(args.server, token=token_from(args))
    if args.wav and not Path(args.wav).is_file():
        print(f"error: no such file: {args.wav}", file=sys.stderr)
        return 2

    def show(event: dict) -> None:
        if event["type"] == "transcript" and event["role"] == "user":
            heard = [v for v in (event.get("language"), event.get("emotion"), event.get("event"))
                     if v and v.lower() not in ("en", "neutral", "speech", "emo_unknown")]
            note = f"  [{', '.join(heard)}]" if heard else ""
            print(f"you:    {event['text']}{note}", file=sys.stderr)
        elif event["type"] == "transcript" and event["role"] == "avatar" and event["final"]:
            print(f"avatar: {event['text']}", file=sys.stderr)
        elif event["type"] == "error":
            print(f"error in stage {event['stage']}: {event['reason']}", file=sys.stderr)

    try:
        info = client.info()
        result = client.turn(wav=args.wav, text=args.text, realtime=not args.fast, on_event=show)
    except TurnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except httpx.HTTPError as err:
        print(f"error: cannot reach {args.server}: {err}", file=sys.stderr)
        return 1
    if result.error:
        return 1
    report = {"user_text": result.user_text, "reply_text": result.reply_text,
              "server": result.server_timings, "client": result.client_timings}
    if args.out and result.chunks:
        report["client"].update(render_reply(result, info["avatar"]["pack"], Path(args.out)))
        report["video"] = str(args.out)
    text = json.dumps(report, indent=2)
    if args.timings:
        Path(args.timings).write_text(text + "\n")
    print(text)
    return 0


def cmd_speak(args) -> int:
    """Speak text into a WAV with the embedded TTS: a quick utterance to send with `turn --wav`."""
    import asyncio

    import numpy as np

    from avatarchat.audio import encode_wav
    from avatarchat.backends.base import create_backend
    from avatarchat.config import parse_stage

    tts = create_backend(parse_stage("avatar-chat speak", "tts", {"backend": "hibari"}))

    async def synthesize() -> np.ndarray:
        return np.concatenate([a.samples async for a in tts.synthesize(args.text)])

    pad = np.zeros(tts.sample_rate // 2, np.float32)  # half a second of silence either side
    Path(args.out).write_bytes(encode_wav(np.concatenate([pad, asyncio.run(synthesize()), pad]),
                                          tts.sample_rate))
    print(args.out)
    return 0


def cmd_info(args) -> int:
    try:
        print(json.dumps(TurnClient(args.server, token=token_from(args)).info(), indent=2))
    except httpx.HTTPError as err:
        print(f"error: cannot reach {args.server}: {err}", file=sys.stderr)
        return 1
    return 0


def token_from(args) -> str | None:
    """The service's token, from the environment variable ``--token-env`` names (never a flag:
    command lines are visible to every local user)."""
    return os.environ.get(args.token_env) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avatar-chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="service address")
    parser.add_argument("--token-env", default="AVATAR_CHAT_TOKEN", metavar="NAME",
                        help="environment variable holding the service's access token, if it needs one "
                             "(default AVATAR_CHAT_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True)
    turn = sub.add_parser("turn", help="send one utterance or text, get the avatar's reply")
    src = turn.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav", help="a recorded utterance (PCM WAV)")
    src.add_argument("--text", help="a typed message instead of speech")
    turn.add_argument("--out", help="write the reply video (MP4, H.264 + AAC) here")
    turn.add_argument("--timings", help="write the per-stage timings JSON here")
    turn.add_argument("--fast", action="store_true",
                      help="render as fast as possible instead of paced to real time")
    turn.set_defaults(func=cmd_turn)
    speak = sub.add_parser("speak", help="speak text into a WAV file with the embedded TTS (offline)")
    speak.add_argument("text")
    speak.add_argument("out", help="WAV file to write")
    speak.set_defaults(func=cmd_speak)
    sub.add_parser("info", help="show the service's stages and avatar").set_defaults(func=cmd_info)
    cert.add_parser(sub)
    models_cli.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

"""Typed service configuration, validated once at start-up.

The configuration is the ``args`` block of an application in a Serve config file
(``serve_config.yaml``). Every error names the source, the dotted key and, where there is a fixed
set, the allowed values. ``python -m avatarchat.config serve_config.yaml`` checks a file by hand,
including its ``http_options`` (HTTPS certificate and key, see avatarchat/http_options.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from avatarchat import registry
from avatarchat.access import load_policy
from avatarchat.errors import ConfigError
from avatarchat.http_options import bind_host, check_http_options


class Options(BaseModel):
    """Base of every options model: unknown keys are errors, values are checked, models frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StageConfig(BaseModel):
    """One stage: which backend, with its validated options, and the backend that stands in when a
    remote one fails (``fallback``, avatarchat/backends/fallback.py)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    stage: str
    backend: str
    options: Options
    fallback: "StageConfig | None" = None


# Stages whose calls can switch to a fallback backend: those a remote service may serve.
FALLBACK_STAGES = ("asr", "llm", "tts", "speech_to_speech")


class Limits(Options):
    """Size and time limits on what one request may ask for."""

    max_upload_bytes: int = Field(8_000_000, gt=0, description="largest accepted request body")
    max_utterance_s: float = Field(60.0, gt=0, description="longest accepted user utterance")
    max_text_chars: int = Field(2000, gt=0, description="longest accepted typed message")
    max_history_messages: int = Field(16, ge=0, description="earlier messages sent to the LLM")
    turn_timeout_s: float = Field(120.0, gt=0, description="a turn still running after this is cancelled")


class Pacing(Options):
    """How far ahead of real time a reply may be produced. Serve streams have no backpressure, so
    producers pace themselves: a small lead keeps latency and interruption cost low."""

    realtime: bool = Field(True, description="pace replies to real time (false renders as fast as it can)")
    lead_s: float = Field(0.6, ge=0.0, le=10.0, description="seconds of reply produced ahead of playback")


class IceServer(Options):
    """One STUN or TURN server offered to WebRTC peers. The TURN password is never written in the
    config: ``credential_env`` names the environment variable that holds it."""

    urls: list[str] = Field(..., min_length=1, description="e.g. [\"stun:stun.example.org:3478\"] or "
                                                           "[\"turn:turn.example.org:3478?transport=udp\"]")
    username: str | None = Field(None, description="TURN user name (a fixed account; not with secret_env)")
    credential_env: str | None = Field(None, description="environment variable holding the TURN password of "
                                                         "a fixed account: every page that asks gets it")
    secret_env: str | None = Field(None, description="environment variable holding the secret shared with "
                                   "the TURN server (coturn's static-auth-secret): each page then gets its own "
                                   "time-limited user name and password (the TURN REST scheme), so a leaked "
                                   "one expires")
    credential_ttl_s: int = Field(86400, gt=0, description="how long a time-limited TURN password is valid "
                                  "(with secret_env); longer than sessions.max_duration_s, since the TURN "
                                  "server refuses to refresh an expired one mid-session")

    @model_validator(mode="after")
    def _one_kind_of_credential(self) -> "IceServer":
        if self.secret_env is not None and (self.username is not None or self.credential_env is not None):
            raise ValueError("secret_env makes its own user names and passwords: remove username and "
                             "credential_env, or secret_env")
        if self.secret_env is not None and not any(u.startswith(("turn:", "turns:")) for u in self.urls):
            raise ValueError(f"secret_env is for TURN servers; urls has no turn: or turns: URL ({self.urls})")
        return self


class Sessions(Options):
    """Live WebRTC sessions (POST /v1/sessions, see docs/protocol.md). Media replicas hold them."""

    max_sessions: int = Field(3, gt=0, description="sessions one Media replica holds at once; a new session "
                              "goes to a replica with room, and when every replica is full it is refused "
                              "with 503. 3 is what one replica holds at a steady 25 fps on a 2-core CPU with "
                              "every session speaking at once (docs/performance.md); raise it on bigger machines")
    drain_timeout_s: float = Field(600.0, gt=0, description="how long a Media replica chosen for scale-down "
                                   "(or replaced by a new version) waits for its sessions to end before ending "
                                   "the rest; keep the Media deployment's graceful_shutdown_timeout_s above it")
    idle_timeout_s: float = Field(300.0, gt=0, description="a session with no speech or text for this long is ended")
    max_duration_s: float = Field(1800.0, gt=0, description="a session is ended after this long whatever it does")
    media_timeout_s: float = Field(5.0, gt=0, description="a session whose client sends no audio for this long "
                                                          "(it vanished without hanging up) is ended")
    connect_timeout_s: float = Field(15.0, gt=0, description="a session not connected this long after the offer is ended")
    max_pending_per_client: int = Field(2, gt=0, description="sessions one client address may hold that have not "
                                        "connected yet (ICE and DTLS); one more offer from it is refused with 429 "
                                        "and Retry-After, so offers that never connect cannot fill the server. "
                                        "Behind a reverse proxy every client has the proxy's address: raise it")
    max_offer_bytes: int = Field(20_000, gt=0, description="largest accepted SDP offer (413 above it)")
    max_messages_per_s: float = Field(5.0, gt=0, description="data-channel messages a session may send per "
                                                           "second on average; more are answered with an error")
    message_burst: int = Field(10, gt=0, description="data-channel messages accepted at once before the "
                                                   "per-second limit applies")
    retry_after_s: int = Field(5, gt=0, description="the Retry-After a full server answers with")
    ice_servers: list[IceServer] = Field(
        default_factory=list, description="STUN/TURN servers; empty: host candidates only, nothing is "
                                          "asked of outside servers")
    host_addresses: list[str] = Field(
        default_factory=list, description="the addresses offered as ICE host candidates; empty: every "
                                          "non-loopback interface (aiortc's own choice); [\"127.0.0.1\"] "
                                          "for loopback-only tests")
    render: list[Literal["server", "browser"]] = Field(
        default_factory=lambda: ["server", "browser"], min_length=1,
        description="where the face is drawn, the modes this deployment offers, the first the default: "
                    "\"server\" sends H.264/VP8 video; \"browser\" sends a few numbers a frame on a data "
                    "channel and the page draws the face (no video encoding: far more sessions per box). "
                    "A client picks one with POST /v1/sessions?render=...")

    @field_validator("render")
    @classmethod
    def _distinct_modes(cls, modes: list[str]) -> list[str]:
        if len(set(modes)) != len(modes):
            raise ValueError(f"render lists a mode twice: {modes}")
        return modes


class Interruption(Options):
    """Talking over the avatar (avatarchat/conversation/barge_in.py): it goes quiet at the first voiced chunk and
    its reply is cancelled once the voice has lasted ``min_speech_ms``; a shorter sound (a cough, a
    click) only pauses it, and it goes on once the sound has stopped for ``resume_after_ms``."""

    min_speech_ms: float = Field(300.0, ge=0.0, le=5000.0, description="voice over the avatar needed to "
                                 "interrupt its reply")
    resume_after_ms: float = Field(200.0, gt=0.0, le=5000.0, description="quiet after a shorter sound before "
                                   "the paused reply goes on")


class Priority(Options):
    """CPU priority (Unix nice values) of the service's processes: the Media replicas' live media before
    the model stages, so every session keeps 25 fps when the CPU is short (see avatarchat/priority.py)."""

    media_niceness: int = Field(0, ge=-20, le=19, description="nice value each Media replica (which "
                                "encodes the sessions' audio and video) asks for; going below Ray's worker "
                                "niceness (15 unless RAY_worker_niceness is set) needs root or CAP_SYS_NICE, "
                                "else it stays and logs a warning")
    stage_niceness: int = Field(10, ge=0, le=19, description="model stage replicas add this to their nice "
                                "value (capped at 19) so live media wins the CPU from them; 0 leaves them")


class Access(Options):
    """Who may use the HTTP API (avatarchat/access.py): bearer tokens, read from environment
    variables named here, never written in the config. Unset: that part of the API is open, which is
    refused when ``http_options.host`` is beyond loopback unless allowed below."""

    user_token_env: str | None = Field(None, description="environment variable holding the token that "
                                       "starting and ending sessions and turns needs (POST/DELETE /v1/sessions, "
                                       "POST /v1/turns, GET /v1/ice, /v1/avatar, /v1/sessions, /v1/info); "
                                       "unset: open")
    operator_token_env: str | None = Field(None, description="environment variable holding the token the "
                                           "operator endpoints need (/v1/diagnostics, /v1/stages, /docs, "
                                           "/openapi.json, any other route); it opens the user routes too; unset: open")
    allow_open_beyond_loopback: bool = Field(False, description="start bound beyond loopback with a part of "
                                             "the API open (only behind a proxy that authenticates)")


class ServiceConfig(Options):
    stages: dict[str, StageConfig]
    limits: Limits = Limits()
    pacing: Pacing = Pacing()
    sessions: Sessions = Sessions()
    interruption: Interruption = Interruption()
    priority: Priority = Priority()
    access: Access = Access()
    record_dir: Path | None = Field(
        None, description="write each user's utterance and transcript here; off (None) by default")

    def stage(self, name: str) -> StageConfig:
        return self.stages[name]

    @property
    def speech_to_speech(self) -> bool:
        """One model hears and answers (stages.speech_to_speech): no llm or tts stage, and an asr
        stage only for captions."""
        return "speech_to_speech" in self.stages


def _key(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _raise_from_validation(source: str, prefix: str, model: type[BaseModel], err: ValidationError):
    first = err.errors()[0]
    key = _key((prefix, *first["loc"]) if prefix else first["loc"])
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields) or "(none)"
        raise ConfigError(source, key, f"unknown key; allowed keys: {allowed}") from None
    raise ConfigError(source, key, f"{first['msg']} (got {first.get('input')!r})") from None


def _validate(source: str, prefix: str, model: type[BaseModel], data: Any):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        _raise_from_validation(source, prefix, model, err)


def parse_stage(source: str, stage: str, raw: Any, prefix: str | None = None) -> StageConfig:
    prefix = prefix or f"stages.{stage}"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, prefix, f"must be a mapping with a 'backend' key, got {raw!r}")
    raw = dict(raw)
    if "backend" not in raw and stage not in registry.DEFAULT_BACKENDS:
        raise ConfigError(source, f"{prefix}.backend", f"required; allowed: {', '.join(registry.available(stage))}")
    name = raw.pop("backend", registry.DEFAULT_BACKENDS.get(stage))
    allowed = registry.available(stage)
    if name not in allowed:
        raise ConfigError(source, f"{prefix}.backend",
                          f"unknown backend {name!r}; allowed: {', '.join(allowed)}")
    fallback = None
    if "fallback" in raw:
        fallback_raw = raw.pop("fallback")
        if stage not in FALLBACK_STAGES:
            raise ConfigError(source, f"{prefix}.fallback",
                              f"only the {', '.join(FALLBACK_STAGES)} stages take a fallback backend")
        if isinstance(fallback_raw, dict) and "fallback" in fallback_raw:
            raise ConfigError(source, f"{prefix}.fallback.fallback", "a fallback has no fallback of its own")
        if not isinstance(fallback_raw, dict) or "backend" not in fallback_raw:
            raise ConfigError(source, f"{prefix}.fallback", f"must be a mapping with a 'backend' key; "
                                                            f"allowed: {', '.join(allowed)}")
        fallback = parse_stage(source, stage, fallback_raw, f"{prefix}.fallback")
    cls = registry.backend_class(stage, name)
    options = _validate(source, prefix, cls.Options, raw)
    return StageConfig(stage=stage, backend=name, options=options, fallback=fallback)


def _speech_to_speech_stages(source: str, stages_raw: dict) -> tuple[str, ...]:
    """The stages a speech-to-speech config runs: the model replaces llm and tts, and asr unless its
    captions come from an asr stage. A replaced stage that is configured anyway is an error (it would
    silently do nothing)."""
    for replaced in ("llm", "tts"):
        if replaced in stages_raw:
            raise ConfigError(source, f"stages.{replaced}", "not used with stages.speech_to_speech (the model "
                                                            "replaces asr, llm and tts); remove it")
    speech = stages_raw["speech_to_speech"]
    captions = speech.get("captions", "model") if isinstance(speech, dict) else "model"
    if captions != "asr" and "asr" in stages_raw:
        raise ConfigError(source, "stages.asr", "with stages.speech_to_speech an asr stage only makes "
                                                "captions: set stages.speech_to_speech.captions: asr, or remove it")
    kept = ("asr",) if captions == "asr" else ()
    return tuple(s for s in registry.STAGES if s in ("vad", "end_of_turn", "speech_to_speech", "avatar", *kept))


def parse_config(data: Any, source: str = "config") -> ServiceConfig:
    """Validate a config mapping (the application's ``args``). Raises ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "(top level)", f"must be a mapping, got {type(data).__name__}")
    data = dict(data)
    stages_raw = data.pop("stages", None) or {}
    if not isinstance(stages_raw, dict):
        raise ConfigError(source, "stages", "must be a mapping of stage name to backend settings")
    if "turn" in stages_raw:  # the stage's name before 0.2
        raise ConfigError(source, "stages.turn", "renamed: the end-of-turn stage is stages.end_of_turn "
                                                 "(same backends and options)")
    unknown = sorted(set(stages_raw) - set(registry.STAGES))
    if unknown:
        raise ConfigError(source, f"stages.{unknown[0]}",
                          f"unknown stage; allowed: {', '.join(registry.STAGES)}")
    if "speech_to_speech" in stages_raw:
        names = _speech_to_speech_stages(source, stages_raw)
    else:
        names = tuple(s for s in registry.STAGES if s not in registry.OPTIONAL_STAGES)
    stages = {s: parse_stage(source, s, stages_raw.get(s)) for s in names}
    config = _validate(source, "", ServiceConfig, {**data, "stages": stages})
    for i, server in enumerate(config.sessions.ice_servers):
        if server.secret_env is not None and server.credential_ttl_s < config.sessions.max_duration_s:
            raise ConfigError(source, f"sessions.ice_servers.{i}.credential_ttl_s",
                              f"{server.credential_ttl_s} s is shorter than sessions.max_duration_s "
                              f"({config.sessions.max_duration_s:g} s): a session would lose its TURN relay "
                              f"when its password expires")
    return config


def app_args_from_serve_config(path: str | Path, app_name: str | None = None) -> dict:
    """The ``args`` of one application in a Serve config file (the first, unless named)."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    apps = doc.get("applications") or []
    if not apps:
        raise ConfigError(str(path), "applications", "no application is defined")
    for i, app in enumerate(apps):
        if app_name is None or app.get("name") == app_name:
            return app.get("args") or {}
    names = ", ".join(str(a.get("name")) for a in apps)
    raise ConfigError(str(path), "applications", f"no application named {app_name!r}; found: {names}")


def load_serve_config(path: str | Path, app_name: str | None = None) -> ServiceConfig:
    """Validate the application args of a Serve config file; errors name the file."""
    args = app_args_from_serve_config(path, app_name)
    return parse_config(args, source=f"{path} (applications[].args)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m avatarchat.config SERVE_CONFIG.yaml [APP_NAME]", file=sys.stderr)
        return 2
    try:
        cfg = load_serve_config(argv[0], argv[1] if len(argv) > 1 else None)
        doc = yaml.safe_load(Path(argv[0]).read_text())
        _, warnings = check_http_options(argv[0], doc)
        # the Gateway checks the same at start-up; here it fails before Ray starts
        load_policy(cfg.access, bind_host(doc.get("http_options")), argv[0])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"config warning: {argv[0]}: {warning}", file=sys.stderr)
    for name, stage in cfg.stages.items():
        print(f"{name:16s} {stage.backend:17s} {stage.options.model_dump(mode='json')}")
        if stage.fallback is not None:
            print(f"{'  fallback':16s} {stage.fallback.backend:17s} {stage.fallback.options.model_dump(mode='json')}")
    return 0


if __name__ == "__main__":
    # Run through the imported module, not this __main__ copy: backends subclass the imported
    # module's Options, which must be the class StageConfig checks against.
    from avatarchat.config import main as _main

    raise SystemExit(_main())

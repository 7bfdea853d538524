"""Builds the Serve application from the config: one deployment per model stage, the Media
deployment whose replicas hold the live sessions, and the stateless Gateway (HTTP) in front.

    Gateway (HTTP) -> Media (live sessions, by session id) -> ASR, LLM, TTS, Avatar
    Gateway (POST /v1/turns)                                -> ASR, LLM, TTS, Avatar

A speech-to-speech config (stages.speech_to_speech) builds one SpeechToSpeech deployment in place of
ASR, LLM and TTS, plus ASR only when the captions come from it.

    serve run serve_config.yaml      (import_path: graph:build_app, args: the service config)

Deployment settings (replicas, autoscaling, CPUs/GPUs, max_ongoing_requests) have defaults on the
deployment classes and are overridden per deployment in the Serve config's `deployments:` list.
"""

from __future__ import annotations

from ray.serve import Application

from avatarchat.config import ServiceConfig, parse_config
from deployments.asr import ASRDeployment
from deployments.avatar import AvatarDeployment
from deployments.gateway import Gateway
from deployments.llm import LLMDeployment
from deployments.media import MediaDeployment
from deployments.speech_to_speech import SpeechToSpeechDeployment
from deployments.tts import TTSDeployment

# Each stage's deployment class; its Serve name is the class's deployment name (ASR, LLM, ...).
DEPLOYMENTS = {"asr": ASRDeployment, "llm": LLMDeployment, "tts": TTSDeployment,
               "speech_to_speech": SpeechToSpeechDeployment, "avatar": AvatarDeployment}


def stage_deployments(config: ServiceConfig) -> dict[str, type]:
    """The stage deployments this config's graph has: a speech-to-speech model replaces ASR (unless
    it makes captions), LLM and TTS."""
    return {name: cls for name, cls in DEPLOYMENTS.items() if name in config.stages}


def build_app(args: dict) -> Application:
    config = parse_config(args, source="Serve config applications[].args")
    bound = {name: cls.bind(config.stage(name), config.priority)
             for name, cls in stage_deployments(config).items()}
    stages = (bound.get("asr"), bound.get("llm"), bound.get("tts"), bound["avatar"], bound.get("speech_to_speech"))
    media = MediaDeployment.bind(config, *stages)
    return Gateway.bind(config, media, *stages)

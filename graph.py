"""Builds the Serve application from the config: one deployment per model stage, the Media
deployment whose replicas hold the live sessions, and the stateless Gateway (HTTP) in front.

    Gateway (HTTP) -> Media (live sessions, by session id) -> ASR, LLM, TTS, Avatar
    Gateway (POST /v1/turns)                                -> ASR, LLM, TTS, Avatar

    serve run serve_config.yaml      (import_path: graph:build_app, args: the service config)

Deployment settings (replicas, autoscaling, CPUs/GPUs, max_ongoing_requests) have defaults on the
deployment classes and are overridden per deployment in the Serve config's `deployments:` list.
"""

from __future__ import annotations

from ray.serve import Application

from avatarchat.config import parse_config
from deployments.asr import ASRDeployment
from deployments.avatar import AvatarDeployment
from deployments.gateway import Gateway
from deployments.llm import LLMDeployment
from deployments.media import MediaDeployment
from deployments.tts import TTSDeployment


def build_app(args: dict) -> Application:
    config = parse_config(args, source="Serve config applications[].args")
    asr = ASRDeployment.bind(config.stage("asr"), config.priority)
    llm = LLMDeployment.bind(config.stage("llm"), config.priority)
    tts = TTSDeployment.bind(config.stage("tts"), config.priority)
    avatar = AvatarDeployment.bind(config.stage("avatar"), config.priority)
    media = MediaDeployment.bind(config, asr, llm, tts, avatar)
    return Gateway.bind(config, media, asr, llm, tts, avatar)

"""The speech-to-speech stage as a Serve deployment; one call hears the user and streams the reply
(text and audio). It replaces the ASR, LLM and TTS deployments where the config selects it."""

from collections.abc import AsyncIterator

from ray import serve

from avatarchat.messages import AudioChunk, SpeechRequest, TextDelta, Transcript
from deployments.stage import StageDeployment


@serve.deployment(
    name="SpeechToSpeech",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=16,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4,
                        "upscale_delay_s": 5, "downscale_delay_s": 60},
    graceful_shutdown_timeout_s=130,  # > limits.turn_timeout_s: scaling down never cuts a turn
    max_constructor_retry_count=3,  # a missing model file or key does not fix itself
)
class SpeechToSpeechDeployment(StageDeployment):
    async def converse(self, request: SpeechRequest) -> AsyncIterator[Transcript | TextDelta | AudioChunk]:
        async for item in self._stream(self.backend.converse(request)):
            yield item

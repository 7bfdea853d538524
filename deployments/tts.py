"""The TTS stage as a Serve deployment; one call speaks one sentence."""

from collections.abc import AsyncIterator

from ray import serve

from avatarchat.messages import AudioChunk
from deployments.stage import StageDeployment


@serve.deployment(
    name="TTS",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=16,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4,
                        "upscale_delay_s": 5, "downscale_delay_s": 60},
    graceful_shutdown_timeout_s=130,  # > limits.turn_timeout_s: scaling down never cuts a turn
    max_constructor_retry_count=3,  # a missing model file does not fix itself
)
class TTSDeployment(StageDeployment):
    async def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        async for audio in self._stream(self.backend.synthesize(text, language)):
            yield audio

"""The ASR stage as a Serve deployment."""

from ray import serve

from avatarchat.messages import AudioChunk, Transcript
from deployments.stage import StageDeployment


@serve.deployment(
    name="ASR",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=8,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                        "upscale_delay_s": 5, "downscale_delay_s": 60},
    graceful_shutdown_timeout_s=130,  # > limits.turn_timeout_s: scaling down never cuts a turn
    max_constructor_retry_count=3,  # a missing model file does not fix itself
)
class ASRDeployment(StageDeployment):
    async def transcribe(self, audio: AudioChunk) -> Transcript:
        async with self.track():
            return await self.backend.transcribe(audio)

"""The avatar stage as a Serve deployment: speech audio in, audio + face motion per frame out.

What crosses Ray is FaceMotion (a few numbers per frame), not pixels: the renderer that turns it
into frames runs where the frames are encoded (see docs/architecture.md).
"""

from collections.abc import AsyncIterator

from ray import serve

from avatarchat.messages import AnimateRequest, AvatarChunk
from deployments.stage import StageDeployment


@serve.deployment(
    name="Avatar",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=16,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4,
                        "upscale_delay_s": 5, "downscale_delay_s": 60},
    graceful_shutdown_timeout_s=130,  # > limits.turn_timeout_s: scaling down never cuts a turn
    max_constructor_retry_count=3,  # a missing model file does not fix itself
)
class AvatarDeployment(StageDeployment):
    async def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]:
        async for chunk in self._stream(self.backend.animate(request)):
            yield chunk

    def describe(self) -> dict:
        return {"pack": self.backend.pack, "fps": self.backend.fps}

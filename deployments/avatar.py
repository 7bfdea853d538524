"""The avatar stage as a Serve deployment: speech audio in, audio + a frame per video frame out.

Frame-drawing avatars (musetalk, liteavatar) run here, where their GPU is, and send JPEG frames;
motion avatars send FaceMotion (a few numbers a frame) and are rendered where the frames are
encoded. The portrait runs inside the media process instead (``runs_with_media``); this deployment
still serves it to the HTTP turn API (POST /v1/turns). See avatarchat/backends/avatar/base.py.
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

    def idle_frames(self) -> list:
        """A frame-drawing avatar's silent loop (VideoFrame list), fetched once by each media process."""
        return self.backend.idle_frames()

    def describe(self) -> dict:
        return {"pack": self.backend.pack, "fps": self.backend.fps, "draws_frames": self.backend.draws_frames}

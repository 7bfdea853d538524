"""The LLM stage as a Serve deployment; replies stream token by token."""

from collections.abc import AsyncIterator

from ray import serve

from avatarchat.messages import LLMRequest, TextDelta
from deployments.stage import StageDeployment


@serve.deployment(
    name="LLM",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=16,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4,
                        "upscale_delay_s": 5, "downscale_delay_s": 60},
    graceful_shutdown_timeout_s=130,  # > limits.turn_timeout_s: scaling down never cuts a turn
    max_constructor_retry_count=3,  # a missing model file does not fix itself
)
class LLMDeployment(StageDeployment):
    async def generate(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        async for delta in self._stream(self.backend.stream(request)):
            yield delta

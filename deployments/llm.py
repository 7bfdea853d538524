"""The LLM stage as a Serve deployment; replies stream token by token."""

from collections.abc import AsyncIterator

from ray import serve

from avatarchat.messages import LLMRequest, TextDelta
from deployments.stage import StageDeployment


@serve.deployment(
    name="LLM",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=16,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4},
    max_constructor_retry_count=3,  # a missing model file does not fix itself
)
class LLMDeployment(StageDeployment):
    async def generate(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        async for delta in self._stream(self.backend.stream(request)):
            yield delta

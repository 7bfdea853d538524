"""Ray Serve deployments: one per model stage, plus the gateway that runs turns through them."""

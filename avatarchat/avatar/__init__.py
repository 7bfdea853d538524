"""The embedded portrait avatar: a photo plus its face landmarks (pack), the per-frame face motion
(motion), and the warps that draw a FaceMotion onto the photo (renderer and its parts)."""

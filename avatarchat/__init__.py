"""avatar-chat: real-time talking-avatar conversations on a Ray Serve deployment graph."""

__version__ = "0.1.0"

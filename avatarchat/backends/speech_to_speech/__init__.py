"""speech_to_speech backends (see base.py for the interface)."""

"""turn backends: end-of-turn decision (see base.py for the interface)."""

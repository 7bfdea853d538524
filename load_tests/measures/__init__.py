"""Measures a benchmark or test takes of the service from outside: latency on sampled audio, lip sync
on received streams, word error rate. Not used by the running service."""

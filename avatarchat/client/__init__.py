"""Clients of the service: the HTTP turn client and the `avatar-chat` command line."""

"""Local stand-ins of remote services, speaking each one's documented wire protocol, so the real
SDKs (dashscope, edge-tts, openai) are tested here without a network or an account. Each runs an
aiohttp server on 127.0.0.1 in a thread of its own and records what it was sent: the machinery they
share is server.py's StandInServer."""

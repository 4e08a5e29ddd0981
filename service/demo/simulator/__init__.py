"""The simulated provider: the OpenAI and Anthropic APIs, well enough for their SDKs.

``server.py`` (the aiohttp app and what each call draws), ``protocols.py`` (the wire shapes
it renders), ``models.py`` (per-model names, pace and tokenizer counts).
"""

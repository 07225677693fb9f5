"""jetty-proxy: OpenAI-compatible front door for LLM relays and sandboxed coding agents."""

__version__ = "0.1.0"

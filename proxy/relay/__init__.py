"""Relaying requests to upstream model providers."""

"""Test helpers shipped with ragmon: a local server speaking the OpenAI and Anthropic wire formats."""
from .llm_server import LLMTestServer

__all__ = ["LLMTestServer"]

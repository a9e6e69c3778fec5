"""Built-in task handlers (text, image, fusion, knowledge) and the registry for user handlers."""

from maif.agents.handlers.registry import Handler, HandlerRegistry

__all__ = ["Handler", "HandlerRegistry"]

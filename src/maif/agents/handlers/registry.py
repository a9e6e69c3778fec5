"""The handler registry: which function runs a task type, under which name and version.

A handler receives the task and the blocks it names as inputs, and returns :class:`BlockDraft` values.
``cpu_bound`` handlers are plain functions run in the agent's thread pool (``processing_threads``);
others may be ``async def`` (an LLM call, a web request) and run on the event loop, or plain functions
cheap enough to run inline. Register user handlers with :meth:`HandlerRegistry.register`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from maif.agents.tasks import AgentTask, BlockDraft
from maif.errors import AgentError, ConfigError
from maif.format.block import MAIFBlock

HandlerResult = Sequence[BlockDraft]
HandlerFunction = Callable[[AgentTask, Sequence[MAIFBlock]], HandlerResult | Awaitable[HandlerResult]]


@dataclass(frozen=True, slots=True)
class Handler:
    task_type: str
    name: str
    version: str
    function: HandlerFunction
    cpu_bound: bool = True

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)


class HandlerRegistry:
    """Task type -> :class:`Handler`. ``with_builtins()`` gives one holding the built-in handlers."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(
        self,
        task_type: str,
        function: HandlerFunction,
        *,
        name: str | None = None,
        version: str = "1",
        cpu_bound: bool | None = None,
        replace: bool = False,
    ) -> Handler:
        """Register ``function`` for ``task_type``; async functions default to not CPU-bound."""
        if not isinstance(task_type, str) or not task_type:
            raise ConfigError("a handler's task type must be a non-empty string")
        if task_type in self._handlers and not replace:
            raise ConfigError(
                f"a handler for task type {task_type!r} is already registered",
                hint="pass replace=True to replace it",
            )
        is_async = inspect.iscoroutinefunction(function)
        handler = Handler(
            task_type,
            name or str(getattr(function, "__qualname__", task_type)),
            version,
            function,
            cpu_bound=(not is_async) if cpu_bound is None else cpu_bound and not is_async,
        )
        self._handlers[task_type] = handler
        return handler

    def get(self, task_type: str) -> Handler:
        handler = self._handlers.get(task_type)
        if handler is None:
            raise AgentError(
                f"no handler is registered for task type {task_type!r}",
                hint=f"registered: {', '.join(sorted(self._handlers)) or 'none'}",
            )
        return handler

    def task_types(self) -> list[str]:
        return sorted(self._handlers)

    @classmethod
    def with_builtins(cls, embedder: Any = None) -> HandlerRegistry:
        """A registry with text_analysis, image_processing, multimodal_fusion, knowledge_extraction."""
        from maif.agents.embeddings import default_embedder
        from maif.agents.handlers import fusion, image, knowledge, text

        provider = embedder or default_embedder()
        registry = cls()
        text.register(registry, provider)
        image.register(registry, provider.dimension)
        fusion.register(registry)
        knowledge.register(registry)
        return registry


__all__ = ["Handler", "HandlerFunction", "HandlerRegistry", "HandlerResult"]

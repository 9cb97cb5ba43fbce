"""Compensable tools for LangChain and LangGraph: each executed tool call is one
effect of the agent's ``EffectLog`` (participant_sdk/effects.py), keyed by the LLM's
tool call id, so an abort or a rollback undoes exactly the calls that ran, newest
first, once each. docs/langgraph.md is the manual; ``compensable`` is re-exported by
participant_sdk.integrations.langgraph.

Keys: a call's idempotency key is its tool call id, prefixed by the graph thread's id
inside a graph (``THREAD:CALL_ID``: a tool call id is unique only within its
conversation), a fresh uuid when the tool is called without one. A call retried under the same id
is answered from the log while its effect stands (it ran: the recorded result) and
is a new effect under the next free key (``id#2``, ``id#3``...) once the effect
before was undone, is being undone, or never happened: an undone call is never
mistaken for the retry, so nothing is compensated twice, and the retry is undone on
its own at the next abort or rollback.
"""

from __future__ import annotations

import contextvars
import inspect
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.tools.base import create_schema_from_function

from participant_sdk.effects import Effect, EffectClass, EffectError, EffectLog, EffectStatus

__all__ = ["EffectName", "compensable"]


EffectName = Literal["compensable", "bufferable", "irreversible"]
_CALL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "concord_tool_call_id", default=None
)
# An undone call's key stays in the log: a retry of the same tool call id is a new
# effect under the next free key (``id#2``, ``id#3``...).
_RETRYABLE = frozenset(
    {
        EffectStatus.COMPENSATING,
        EffectStatus.COMPENSATED,
        EffectStatus.NOT_APPLIED,
        EffectStatus.DISCARDED,
        EffectStatus.ESCALATED,
        EffectStatus.RESOLVED,
    }
)


def _effect_key(effects: EffectLog, call_id: str) -> str:
    """The idempotency key of a call with this tool call id: the id itself, or the
    next incarnation when the calls made under it were undone (or never happened)."""
    attempt = 1
    while True:
        key = call_id if attempt == 1 else f"{call_id}#{attempt}"
        try:
            effect = effects.get(key)
        except EffectError:
            return key
        if effect.status in _RETRYABLE or effect.doomed:
            attempt += 1  # undone (or being undone), or never happened: a new effect
            continue
        return key  # DONE, INTENT, BUFFERED...: the same call again (deduplicated)


def compensable(
    effects: EffectLog,
    *,
    undo: Callable[[Effect], Any] | None = None,
    effect: EffectName | EffectClass = "compensable",
    probe: Callable[[Effect], bool] | None = None,
    verify: Callable[[Effect], bool] | None = None,
    name: str | None = None,
) -> Callable[[BaseTool | Callable[..., Any]], StructuredTool]:
    """Declare a tool's effect in the agent's ``EffectLog``, as a LangChain tool.

    Wraps a LangChain tool (``@tool``) or a plain function with a docstring; returns
    a ``StructuredTool`` that a ``ToolNode`` or ``create_react_agent`` runs as it is.
    ``effect``: "compensable" (runs now; ``undo(effect)`` undoes it on abort or
    rollback, newest first), "bufferable" (held until the transaction commits) or
    "irreversible" (held until commit and ``effects.approve(key)``): docs/rollback.md.
    Each executed call is one effect whose idempotency key is the LLM's tool call id
    (a fresh id when the tool is called without one); ``undo`` gets the ``Effect``:
    its ``kwargs`` are the tool's arguments, ``result`` what it returned, ``key`` the
    key. A function that takes ``idempotency_key`` gets the key too. A call retried
    with the same tool call id is answered from the log when it ran, and is a new
    effect (``id#2``) when the one before was undone: it is never compensated twice.
    """
    effect_class = EffectClass(effect) if isinstance(effect, str) else effect
    if effect_class is EffectClass.COMPENSABLE and undo is None:
        raise ValueError("a compensable tool needs undo=: the call that undoes it")
    if effect_class is not EffectClass.COMPENSABLE and undo is not None:
        raise ValueError(f"a {effect_class.value} tool is never undone: drop undo=")

    def wrap(target: BaseTool | Callable[..., Any]) -> StructuredTool:
        if inspect.iscoroutinefunction(target) or getattr(target, "coroutine", None):
            raise ValueError(
                f"{getattr(target, 'name', getattr(target, '__name__', target))}: async tools "
                "are not supported yet (the effect log runs tools synchronously): wrap a "
                "plain function"
            )
        takes_key = False
        if isinstance(target, BaseTool):
            inner = target
        else:
            takes_key = "idempotency_key" in inspect.signature(target).parameters
            # The key is the SDK's to give, not an argument the model fills in.
            schema = create_schema_from_function(
                target.__name__, target, filter_args=["idempotency_key"]
            )
            inner = StructuredTool.from_function(target, args_schema=schema)
        tool_name = name or inner.name

        def run(*, idempotency_key: str, **kwargs: Any) -> Any:
            if takes_key:
                assert callable(target)
                return target(**kwargs, idempotency_key=idempotency_key)
            return inner.invoke(kwargs)

        if effect_class is EffectClass.COMPENSABLE:
            assert undo is not None
            declared = effects.compensable(
                compensate=undo, probe=probe, verify=verify, name=tool_name
            )(run)
        elif effect_class is EffectClass.BUFFERABLE:
            declared = effects.bufferable(probe=probe, name=tool_name)(run)
        else:
            declared = effects.irreversible(probe=probe, name=tool_name)(run)

        def call(**kwargs: Any) -> Any:
            kwargs.pop("idempotency_key", None)
            call_id = _CALL_ID.get() or uuid.uuid4().hex
            key = _effect_key(effects, call_id)
            result = declared(idempotency_key=key, **kwargs)
            if result is None and effect_class is not EffectClass.COMPENSABLE:
                return f"{tool_name}: held until the transaction commits (effect {key})"
            return result

        return _KeyedTool(
            name=tool_name,
            description=inner.description,
            args_schema=inner.args_schema or {"type": "object", "properties": {}},
            func=call,
            effect_log=effects,
            effect_class=effect_class,
        )

    return wrap


class _KeyedTool(StructuredTool):
    """A ``StructuredTool`` that hands the tool call id of the call it runs to its
    function (through a context variable, so the tool's own schema is unchanged)."""

    effect_log: Any = None
    effect_class: Any = None

    def run(self, tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        token = _CALL_ID.set(_call_key(kwargs))
        try:
            return super().run(tool_input, *args, **kwargs)
        finally:
            _CALL_ID.reset(token)

    async def arun(self, tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        token = _CALL_ID.set(_call_key(kwargs))
        try:
            return await super().arun(tool_input, *args, **kwargs)
        finally:
            _CALL_ID.reset(token)


def _call_key(run_kwargs: Mapping[str, Any]) -> str | None:
    """``THREAD:CALL_ID`` inside a graph (a tool call id is unique only within its
    conversation: two threads of one agent, or a deterministic model, repeat them),
    the bare tool call id outside one, None without one."""
    call_id = run_kwargs.get("tool_call_id")
    if not call_id:
        return None
    config = run_kwargs.get("config") or {}
    thread = (config.get("configurable") or {}).get("thread_id")
    return f"{thread}:{call_id}" if thread is not None else str(call_id)

"""The trip's three LangGraph agents and the outside world they book in.

Each agent is a small ReAct-shaped graph (a chat model node, a ``ToolNode``) with a
deterministic fake chat model from langchain-core (no network, no keys), its
checkpoints in a ``ConcordSaver``, one compensable tool, and a Concord participant
whose global checkpoints and rollback rounds reach the graph (``graph_rollback``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from participant_sdk import (
    Effect,
    EffectLog,
    LmdbCheckpointStore,
    Participant,
    RestoreResult,
    Reverter,
    Role,
    checkpoints_dir,
)
from participant_sdk.integrations.langgraph import ConcordSaver, compensable, graph_rollback


@dataclass
class World:
    """The outside world: what each service has booked, charged and undone, by
    idempotency key (a second request with one key changes nothing)."""

    booked: dict[str, str] = field(default_factory=dict)  # key -> what
    undone: dict[str, str] = field(default_factory=dict)  # key -> what
    undo_requests: list[str] = field(default_factory=list)  # every undo asked, in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def book(self, key: str, what: str) -> str:
        with self.lock:
            self.booked.setdefault(key, what)
        return what

    def undo(self, effect: Effect) -> None:
        with self.lock:
            self.undo_requests.append(effect.key)
            if effect.key in self.booked:
                self.undone.setdefault(effect.key, self.booked[effect.key])

    def ledger(self) -> list[str]:
        with self.lock:
            return [
                f"{key}: {what}" + (" (undone)" if key in self.undone else "")
                for key, what in self.booked.items()
            ]


@dataclass(frozen=True)
class Plan:
    agent: str  # the participant id and the graph's thread id
    tool: str
    args: dict[str, Any]
    price: int
    call_id: str


class TripAgent:
    """One agent: its graph on a ConcordSaver, its effect log, its participant."""

    def __init__(self, plan: Plan, world: World, data_dir: Path) -> None:
        self.plan = plan
        self.world = world
        self.thread = {"configurable": {"thread_id": plan.agent}}
        self.saver = ConcordSaver.open(data_dir)
        self.effects = EffectLog.open(data_dir, sleep=lambda s: None)
        self.reverter = Reverter(
            LmdbCheckpointStore(checkpoints_dir(data_dir)), effects=self.effects
        )
        self.rewound = threading.Event()
        self.data_dir = data_dir

        @compensable(self.effects, undo=world.undo, name=plan.tool)
        def act(item: str, price: int, idempotency_key: str) -> str:
            """Book the item at the price (the service dedupes by key)."""
            return world.book(idempotency_key, f"{plan.tool} {item} {price} EUR")

        model = FakeMessagesListChatModel(
            responses=[
                AIMessage(
                    f"I will {plan.tool} for {plan.price} EUR.",
                    tool_calls=[{"name": plan.tool, "args": plan.args, "id": plan.call_id}],
                ),
                AIMessage(f"Done: {plan.tool}."),
            ]
        )

        def think(state: MessagesState) -> dict[str, Any]:
            return {"messages": [model.invoke(state["messages"])]}

        builder = StateGraph(MessagesState)
        builder.add_node("agent", think)
        builder.add_node("tools", ToolNode([act]))
        builder.add_edge(START, "agent")
        builder.add_conditional_edges("agent", tools_condition)
        builder.add_edge("tools", "agent")
        # Planning stops before any tool runs: that is the cut the trip can go back to.
        self.graph = builder.compile(checkpointer=self.saver, interrupt_before=["tools"])

    def participant(self, coordinators: list[str], tls: Any) -> Participant:
        binding = graph_rollback(
            self.saver, self.reverter, [self.plan.agent], restored=self._rewound
        )
        return Participant(self.plan.agent, self.data_dir, coordinators, rollback=binding, tls=tls)

    def _rewound(self, result: RestoreResult, undone: dict[str, str]) -> None:
        self.rewound.set()

    @property
    def effect_key(self) -> str:
        """The key of its tool call's effect: the graph thread and the tool call id."""
        return f"{self.plan.agent}:{self.plan.call_id}"

    def make_plan(self, request: str) -> None:
        self.graph.invoke({"messages": [HumanMessage(request)]}, self.thread)

    def act(self, txn_id: str) -> None:
        """Resume the graph: its tool runs as an effect of the transaction."""
        with self.effects.transaction(txn_id):
            self.graph.invoke(None, self.thread)

    def describe(self) -> str:
        state = self.graph.get_state(self.thread)
        last = state.values["messages"][-1].content
        waiting = f"waiting to run {state.next[0]}" if state.next else "finished"
        return f"{self.plan.agent}: {waiting}; last message {last!r}"

    def undone(self) -> list[str]:
        """The keys of its effects that were undone, in the order they were undone."""
        done = [e for e in self.effects.effects() if e.status.value == "COMPENSATED"]
        return [e.key for e in sorted(done, key=lambda e: e.updated_ms)]

    def close(self) -> None:
        self.saver.close()
        self.reverter.checkpoints.close()
        self.effects.close()


__all__ = ["Plan", "Role", "TripAgent", "World"]

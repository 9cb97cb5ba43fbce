"""A real LangGraph graph on ConcordSaver: a cut at the planning checkpoint, a rollback
to it (the agent's Reverter undoes the tool calls made since; the saver returns the
thread to the cut), and a resume that books again under a new effect key."""

from __future__ import annotations

import asyncio
import operator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from participant_sdk import EffectLog, LmdbCheckpointStore, Reverter, checkpoints_dir
from participant_sdk.effects import Effect, EffectStatus
from participant_sdk.integrations.langgraph import (
    ConcordSaver,
    compensable,
    graph_rollback,
    undone_thread,
)
from participant_sdk.storage.checkpoint_format import CheckpointError


def _graph(saver: ConcordSaver, effects: EffectLog, cancelled: list[str]) -> Any:
    def cancel_flight(effect: Effect) -> None:
        cancelled.append(effect.key)

    @compensable(effects, undo=cancel_flight)
    def book_flight(flight: str) -> str:
        """Book a flight."""
        return f"booked {flight}"

    model = FakeMessagesListChatModel(
        responses=[
            AIMessage(
                "",
                tool_calls=[{"name": "book_flight", "args": {"flight": "LIS-NYC"}, "id": "f-1"}],
            ),
            AIMessage("Your flight is booked."),
        ]
    )

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([book_flight]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=saver, interrupt_before=["tools"])


def test_rollback_returns_the_thread_and_undoes_its_tools(tmp_path: Path) -> None:
    saver = ConcordSaver.open(tmp_path)
    effects = EffectLog.open(tmp_path)
    reverter = Reverter(LmdbCheckpointStore(checkpoints_dir(tmp_path)), effects=effects)
    cancelled: list[str] = []
    graph = _graph(saver, effects, cancelled)
    config = {"configurable": {"thread_id": "flight-agent"}}
    try:
        graph.invoke({"messages": [HumanMessage("Book me to New York")]}, config)
        assert graph.get_state(config).next == ("tools",)  # planned, nothing booked

        binding = graph_rollback(saver, reverter, ["flight-agent"])
        # What a global checkpoint round does at this participant:
        reverter.save(binding.capture(), checkpoint_id="before-booking")
        planned = graph.get_state(config).config["configurable"]["checkpoint_id"]
        history = [t.checkpoint["id"] for t in saver.list(config)]

        graph.invoke(None, config)  # books, then the model answers
        state = graph.get_state(config)
        assert state.next == ()
        assert state.values["messages"][-1].content == "Your flight is booked."
        assert effects.get("flight-agent:f-1").status is EffectStatus.DONE

        # What the EXECUTE of a rollback round does:
        result = reverter.restore("before-booking")
        assert binding.restored is not None
        binding.restored(result)
        assert cancelled == ["flight-agent:f-1"]
        rewound = graph.get_state(config)
        assert rewound.next == ("tools",)
        assert [m.type for m in rewound.values["messages"]] == ["human", "ai"]
        # Exactly the planning checkpoint (LangGraph resumes its tasks by its id).
        assert rewound.config["configurable"]["checkpoint_id"] == planned
        assert [t.checkpoint["id"] for t in saver.list(config)] == history
        # What was rewound away is kept, in a thread of its own.
        undone = {"configurable": {"thread_id": undone_thread("flight-agent", planned)}}
        kept = [t.checkpoint["id"] for t in saver.list(undone)]
        assert kept[-1] == planned and len(kept) == 3  # the plan, the booking, the answer

        # Resuming books again: the same tool call id, a new effect.
        graph.invoke(None, config)
        assert effects.get("flight-agent:f-1#2").status is EffectStatus.DONE
        assert effects.get("flight-agent:f-1").status is EffectStatus.COMPENSATED
        reverter.recover()
        assert cancelled == ["flight-agent:f-1"]
    finally:
        reverter.checkpoints.close()
        effects.close()
        saver.close()


def test_rewind_to_a_pruned_checkpoint_says_so() -> None:
    saver = ConcordSaver.memory()
    effects = EffectLog()
    graph = _graph(saver, effects, [])
    config = {"configurable": {"thread_id": "t"}}
    graph.invoke({"messages": [HumanMessage("hi")]}, config)
    cut = saver.cut(["t"])
    graph.invoke(None, config)
    saver.prune(["t"])
    with pytest.raises(CheckpointError, match=r"no checkpoint .* to rewind to"):
        saver.rewind(cut)


class Log(TypedDict):
    log: Annotated[list[str], operator.add]


def test_rewind_resumes_a_paused_subgraph_where_the_cut_found_it() -> None:
    """A subgraph's checkpoints live in a namespace named after its parent's task,
    whose id LangGraph derives from the parent checkpoint's id: the rewind keeps the
    ids, so the parent resumes the same subgraph at the same step (async API)."""
    ran: list[str] = []

    def step(name: str) -> Any:
        def run(state: Log) -> dict[str, Any]:
            ran.append(name)
            return {"log": [name]}

        return run

    inner = StateGraph(Log)
    inner.add_node("s1", step("s1"))
    inner.add_node("s2", step("s2"))
    inner.add_edge(START, "s1")
    inner.add_edge("s1", "s2")
    child = inner.compile(interrupt_before=["s2"])
    outer = StateGraph(Log)
    outer.add_node("a", step("a"))
    outer.add_node("child", child)
    outer.add_node("b", step("b"))
    outer.add_edge(START, "a")
    outer.add_edge("a", "child")
    outer.add_edge("child", "b")
    saver = ConcordSaver.memory()
    graph = outer.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "t"}}

    async def scenario() -> None:
        await graph.ainvoke({"log": []}, config)  # paused inside the subgraph
        cut = saver.cut(["t"])
        assert len(cut["t"]) == 2  # the root namespace and the subgraph's
        await graph.ainvoke(None, config)
        assert ran == ["a", "s1", "s2", "b"]
        saver.rewind(cut)
        state = await graph.aget_state(config)
        assert state.next == ("child",)
        await graph.ainvoke(None, config)
        assert ran == ["a", "s1", "s2", "b", "s2", "b"]  # s1 is not run again

    asyncio.run(scenario())

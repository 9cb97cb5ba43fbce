"""A real LangGraph graph on ConcordSaver: a cut at the planning checkpoint, a rollback
to it (the agent's Reverter undoes the tool calls made since; the saver returns the
thread to the cut), and a resume that books again under a new effect key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from participant_sdk import EffectLog, LmdbCheckpointStore, Reverter, checkpoints_dir
from participant_sdk.effects import Effect, EffectStatus
from participant_sdk.integrations.langgraph import ConcordSaver, compensable, graph_rollback
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
        assert rewound.metadata is not None
        assert rewound.metadata["concord_rewound_to"] == planned
        # History is kept: the booked run is still listed, under the new head.
        assert len(list(saver.list(config))) > 3

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

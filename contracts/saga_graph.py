"""The saga graph: which event makes which agent act, and what it emits, found by running the rules.

The rules (``erynoa.saga``) decide from a booking's state, not from the event that arrived last,
so "which event does an agent react to" is answered by exploring the states they reach: start
from a ``BookingRequested``, let every agent take every action the rules give it, fold each
event its adapter may emit for that action (``contracts.sources``), and inject the requests the
API and operators send (a cancel, a provider's answer) in every state. An edge
``trigger --agent: Action--> emitted`` is recorded where folding ``trigger`` gives an agent an
action it did not have, or where an action appears only because time passed (a deadline); an
action taken for a booking that has already ended is a compensation. Events with ``Literal``
fields are explored with each allowed value, so both answers of a provider are followed.

Pure: only the rules run; no adapter, broker or database.
"""

from __future__ import annotations

import dataclasses
import typing
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import product
from typing import Any

from erynoa import events as ev
from erynoa import saga

DEADLINE_PASSED = "deadline passed"
_T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
_LATER = _T0 + timedelta(days=30)  # after every deadline the rules know of
# A bound that only a rule change making the states endless could reach (they repeat long before).
MAX_TRANSITIONS = 200_000


@dataclass(frozen=True, order=True)
class Edge:
    trigger: str  # an event type, or DEADLINE_PASSED
    agent: str
    action: str
    emits: tuple[str, ...]
    compensation: bool


@dataclass(frozen=True)
class SagaGraph:
    edges: tuple[Edge, ...]
    # Events that enter the saga from outside the agents (API, operators), by sender.
    inputs: dict[str, tuple[str, ...]]

    def mermaid(self) -> str:
        """A Mermaid flowchart: events are boxes, agents' actions are arrows; a compensation's
        arrow is dotted and says so."""
        lines = ["flowchart TD"]
        ids: dict[str, str] = {}

        def node(name: str) -> str:
            if name not in ids:
                ids[name] = f"n{len(ids)}"
                shape = f'(["{name}"])' if name == DEADLINE_PASSED else f'["{name}"]'
                lines.append(f"  {ids[name]}{shape}")
            return ids[name]

        for sender, events in sorted(self.inputs.items()):
            for event in events:
                lines.append(f'  {sender.replace("-", "_")}_in(["{sender}"]) --> {node(event)}')
        grouped: dict[tuple[str, str, str, bool], list[str]] = {}
        for edge in self.edges:
            for emitted in edge.emits:
                key = (edge.trigger, emitted, edge.agent, edge.compensation)
                grouped.setdefault(key, []).append(edge.action)
        for (trigger, emitted, agent, compensation), actions in sorted(grouped.items()):
            label = f"{agent}: {', '.join(sorted(set(actions)))}"
            if compensation:
                label += " (compensation)"
            arrow = "-.->" if compensation else "-->"
            lines.append(f'  {node(trigger)} {arrow}|"{label}"| {node(emitted)}')
        return "\n".join(lines)


def _placeholder(
    spec: ev.FieldSpec, state: saga.BookingState, action: saga.Action | None
) -> list[Any]:
    """The values to try for one field of an event built for ``state`` (and ``action``)."""
    for source in (action, state):
        if source is not None and hasattr(source, spec.name):
            value = getattr(source, spec.name)
            if value is not None or spec.optional:
                return [value]
    if spec.allowed is not None:
        return sorted(spec.allowed)
    if spec.optional:
        return [None]
    if spec.kind is ev.Money:
        return [state.price]
    if spec.kind is datetime:
        # A time a field names (a deadline) lies after the event: answers given "now" are in time.
        return [_T0 + timedelta(hours=1)]
    if spec.kind is int:
        return [0]
    if spec.kind is bool:
        return [False]
    return [f"{spec.name}-1"]


_ENVELOPE = {"event_id", "occurred_at", "correlation_id", "causation_id", "producer"}


def _events_of(
    cls: type[ev.BookingEvent], state: saga.BookingState, action: saga.Action | None
) -> list[ev.BookingEvent]:
    specs = [s for s in ev.field_specs(cls) if s.name not in _ENVELOPE]
    choices = [_placeholder(s, state, action) for s in specs]
    built = []
    for values in product(*choices):
        built.append(
            cls(
                event_id=f"{cls.event_type}-1",
                occurred_at=_T0,
                correlation_id=state.correlation_id,
                producer="saga-graph",
                **dict(zip((s.name for s in specs), values, strict=True)),
            )
        )
    return built


# What the rules never read when they decide (labels, ids, counters): states that differ only
# in these lead to the same actions, so the exploration treats them as one.
_UNDECIDING = frozenset(
    {
        "events_applied",
        "updated_at",
        "failure_reason",
        "ended_by",
        "provider_answer_reason",
        "hold_id",
        "payment_id",
    }
)
_DECIDING = tuple(
    f.name for f in dataclasses.fields(saga.BookingState) if f.name not in _UNDECIDING
)


def _normal(state: saga.BookingState) -> tuple[Any, ...]:
    return tuple(getattr(state, name) for name in _DECIDING)


def _actions(agent: saga.Agent, state: saga.BookingState, now: datetime) -> dict[str, saga.Action]:
    return {type(a).__name__: a for a in saga.next_actions(agent, state, now)}


_EXPLORED: dict[str, SagaGraph] = {}


def explore(
    agents: dict[str, dict[str, set[str]]],
    reactions: dict[str, dict[str, set[str]]],
    inputs: dict[str, set[str]],
    consumes: dict[str, set[str]],
) -> SagaGraph:
    """The graph, from what each agent emits per action (``agents``) and per event it reacts to
    (``reactions``), the events senders outside the agents inject (``inputs``, by sender), and
    the event types each agent's subscriptions deliver (``consumes``).

    The same inputs give the same graph: it is computed once per process."""
    key = repr(
        [
            sorted((k, sorted((a, sorted(e)) for a, e in v.items())) for k, v in agents.items()),
            sorted((k, sorted((a, sorted(e)) for a, e in v.items())) for k, v in reactions.items()),
            sorted((k, sorted(v)) for k, v in inputs.items()),
            sorted((k, sorted(v)) for k, v in consumes.items()),
        ]
    )
    if key not in _EXPLORED:
        _EXPLORED[key] = _explore(agents, reactions, inputs, consumes)
    return _EXPLORED[key]


def _explore(
    agents: dict[str, dict[str, set[str]]],
    reactions: dict[str, dict[str, set[str]]],
    inputs: dict[str, set[str]],
    consumes: dict[str, set[str]],
) -> SagaGraph:
    classes = {
        name: cls for name, cls in ev.EVENT_TYPES.items() if issubclass(cls, ev.BookingEvent)
    }
    request = ev.BookingRequested(
        event_id="BookingRequested-1",
        occurred_at=_T0,
        correlation_id="c-1",
        producer="saga-graph",
        booking_id="00000000-0000-4000-8000-000000000001",
        customer_id="customer-1",
        service_id="service-1",
        provider_id="provider-1",
        slot_start=_T0 + timedelta(days=7),
        slot_end=_T0 + timedelta(days=7, hours=1),
        price=ev.Money(4500, "EUR"),
        payment_method="pm_card_visa",
        response_deadline_seconds=3600,
    )
    injected = sorted(
        {e for events in inputs.values() for e in events if e in classes} - {"BookingRequested"}
    )
    edges: set[Edge] = set()
    first = saga.start(request)
    handled: set[tuple[tuple[Any, ...], str, tuple[Any, ...]]] = set()
    expanded: set[tuple[Any, ...]] = set()
    known = {name: saga_agent(name) for name in agents}
    emitted_by = {
        agent: {e for events in per_action.values() for e in events}
        | {e for events in reactions.get(agent, {}).values() for e in events}
        for agent, per_action in agents.items()
    }
    queue: deque[tuple[saga.BookingState, saga.BookingState | None, str]] = deque(
        [(first, None, "BookingRequested")]
    )
    while queue:
        state, before, trigger = queue.popleft()
        normal = _normal(state)
        # What follows a state depends on the state alone, so it is expanded once; a reaction
        # depends on its trigger too, so it is followed from every state it happens in.
        expand = normal not in expanded
        expanded.add(normal)
        follow: list[tuple[str, saga.Action | None]] = []
        for agent_name, per_action in sorted(agents.items()):
            agent = known[agent_name]
            now = _actions(agent, state, _T0)
            was = _actions(agent, before, _T0) if before is not None else {}
            later = _actions(agent, state, _LATER)
            # An agent folds the events it emits itself as well as the ones it consumes.
            sees = consumes.get(agent_name, set()) | emitted_by.get(agent_name, set())
            for name, action in sorted({**later, **now}.items()):
                if name not in per_action:
                    raise ValueError(
                        f"the rules give {agent_name} the action {name}, but its adapter's "
                        f"execute() has no `case saga.{name}()`"
                    )
                emitted = tuple(sorted(per_action[name]))
                if expand:
                    follow += [(event_type, action) for event_type in emitted]
                if name in now and name in was:
                    continue  # the agent had it already: not this event's doing
                cause = trigger if name in now else DEADLINE_PASSED
                if cause != DEADLINE_PASSED and trigger not in sees:
                    continue  # the agent never sees this event; another one gives it the action
                edges.add(Edge(cause, agent_name, name, emitted, state.status in saga.TERMINAL))
            reacted = tuple(sorted(reactions.get(agent_name, {}).get(trigger, set())))
            if reacted and trigger in sees:
                edges.add(Edge(trigger, agent_name, "react", reacted, False))
                follow += [(event_type, None) for event_type in reacted]
        if expand:
            follow += [(event_type, None) for event_type in injected]
        for event_type, cause_action in follow:
            for event in _events_of(classes[event_type], state, cause_action):
                after = saga.evolve(state, event)
                transition = (normal, event_type, _normal(after))
                if transition in handled:
                    continue
                handled.add(transition)
                if len(handled) > MAX_TRANSITIONS:
                    raise RuntimeError(
                        f"the saga's states did not converge within {MAX_TRANSITIONS} transitions"
                    )
                queue.append((after, state, event_type))
    inputs_sorted = {sender: tuple(sorted(evs)) for sender, evs in inputs.items()}
    return SagaGraph(edges=tuple(sorted(edges)), inputs=inputs_sorted)


def saga_agent(name: str) -> saga.Agent:
    for agent in typing.get_args(saga.Agent):
        if agent == name:
            return typing.cast(saga.Agent, agent)
    raise ValueError(f"{name!r} is not one of the saga's agents: {typing.get_args(saga.Agent)}")

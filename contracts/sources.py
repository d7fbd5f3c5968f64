"""Who sends which event, and what each agent emits for each of the saga's actions, read from code.

Static analysis of the source (``ast``; nothing is imported or run), so the AsyncAPI document
follows the code instead of a list that drifts from it:

* an agent adapter is a class with ``agent: saga.Agent = "<name>"``; what it emits for an action
  is every ``ctx.emit(<Event>, ...)`` reachable from that action's ``case saga.<Action>()`` in
  ``execute`` (through calls of its own ``self.<method>``), and what it emits when it *reacts*
  to an event is what is reachable from ``if isinstance(event, <Event>)`` in ``react``;
* any other module sends the events it builds with ``make(<Event>, ...)`` or
  ``make_catalog(<Event>, ...)``: the API's modules are the service ``api``, the load
  generator's ``loadgen`` (synthetic traffic, marked by a header), every other package's are
  operator tooling (``ops``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

API_SERVICE = "api"
LOADGEN_SERVICE = "loadgen"
OPS_SERVICE = "ops"
# Where the senders live. The benchmarks and the fault harness build events only to measure or
# break the system, never as a part of it.
SENDER_PACKAGES = ("api", "streams", "consumers", "ops", "loadgen")
_SERVICE_OF_PACKAGE = {"api": API_SERVICE, "loadgen": LOADGEN_SERVICE}


@dataclass
class AgentCode:
    """One agent adapter as the code says it behaves."""

    agent: str
    path: Path
    emits_for_action: dict[str, set[str]] = field(default_factory=dict)
    emits_on_event: dict[str, set[str]] = field(default_factory=dict)

    @property
    def emits(self) -> set[str]:
        found: set[str] = set()
        for events in (*self.emits_for_action.values(), *self.emits_on_event.values()):
            found |= events
        return found


@dataclass
class CodeFacts:
    agents: dict[str, AgentCode]
    # service -> event type -> the files that send it
    senders: dict[str, dict[str, set[Path]]]


def _python_files(root: Path, packages: Iterable[str]) -> Iterator[Path]:
    for package in packages:
        directory = root / package
        if directory.is_dir():
            yield from sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def _name(node: ast.expr) -> str | None:
    """``X`` or ``module.X`` → ``X``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _agent_name(cls: ast.ClassDef) -> str | None:
    for statement in cls.body:
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and statement.target.id == "agent"
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str)
        ):
            return statement.value.value
    return None


class _Emits:
    """``ctx.emit(<Event>)`` calls reachable from a node, through ``self.<method>`` calls and
    calls of the module's own functions."""

    def __init__(
        self, cls: ast.ClassDef, events: frozenset[str], module: ast.Module | None = None
    ) -> None:
        self.methods = {
            m.name: m for m in cls.body if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        self.functions = {
            f.name: f
            for f in (module.body if module else ())
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        self.events = events

    def reachable(self, nodes: Iterable[ast.AST], seen: set[str] | None = None) -> set[str]:
        seen = set() if seen is None else seen
        found: set[str] = set()
        for root in nodes:
            for node in ast.walk(root):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "emit" and node.args:
                    event = _name(node.args[0])
                    if event in self.events:
                        found.add(event)
                if (
                    isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "self"
                    and func.attr in self.methods
                    and func.attr not in seen
                ):
                    seen.add(func.attr)
                    found |= self.reachable([self.methods[func.attr]], seen)
                if (
                    isinstance(func, ast.Name)
                    and func.id in self.functions
                    and f"module:{func.id}" not in seen
                ):
                    seen.add(f"module:{func.id}")
                    found |= self.reachable([self.functions[func.id]], seen)
        return found


def _agent_code(
    path: Path, cls: ast.ClassDef, agent: str, events: frozenset[str], module: ast.Module
) -> AgentCode:
    emits = _Emits(cls, events, module)
    code = AgentCode(agent=agent, path=path)
    execute = emits.methods.get("execute")
    for node in ast.walk(execute) if execute else ():
        if not isinstance(node, ast.match_case):
            continue
        pattern = node.pattern
        if isinstance(pattern, ast.MatchClass):
            action = _name(pattern.cls)
            if action is not None:
                code.emits_for_action.setdefault(action, set()).update(emits.reachable(node.body))
    react = emits.methods.get("react")
    for node in ast.walk(react) if react else ():
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Call)
            and _name(node.test.func) == "isinstance"
            and len(node.test.args) == 2
        ):
            event = _name(node.test.args[1])
            if event in events:
                code.emits_on_event.setdefault(event, set()).update(emits.reachable(node.body))
    return code


def _built_events(tree: ast.AST, events: frozenset[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        # make/make_catalog build an event; a builder that takes the event class first and
        # hands it to make (``ops.sagas``' ``request``) counts as well.
        if isinstance(node, ast.Call) and _name(node.func) in ("make", "make_catalog", "request"):
            event = _name(node.args[0]) if node.args else None
            if event in events:
                found.add(event)
    return found


def read_code(root: Path, event_types: Iterable[str]) -> CodeFacts:
    """The agents and the senders found under ``root`` (the project's checkout)."""
    events = frozenset(event_types)
    agents: dict[str, AgentCode] = {}
    senders: dict[str, dict[str, set[Path]]] = {}
    for path in _python_files(root, SENDER_PACKAGES):
        tree = ast.parse(path.read_text(), filename=str(path))
        relative = path.relative_to(root)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and (agent := _agent_name(node)) is not None:
                if agent in agents:
                    raise ValueError(
                        f"{relative}: a second adapter for agent {agent!r} "
                        f"(the first is in {agents[agent].path})"
                    )
                agents[agent] = _agent_code(relative, node, agent, events, tree)
        built = _built_events(tree, events)
        if not built or relative.parts[0] == "streams":
            # An agent's events are what its adapter emits; streams' own make() is ctx.emit's.
            continue
        service = _SERVICE_OF_PACKAGE.get(relative.parts[0], OPS_SERVICE)
        for event in built:
            senders.setdefault(service, {}).setdefault(event, set()).add(relative)
    for agent, code in agents.items():
        for event in code.emits:
            senders.setdefault(agent, {}).setdefault(event, set()).add(code.path)
    return CodeFacts(agents=agents, senders=senders)

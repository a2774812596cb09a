"""
Named states with legal transitions, in the style of h11.

Each lifecycle in txawsgi (a request, a response, the iteration engine) is a
L{Machine}: an enum of states and the edges between them.  Moving along an
edge that is not declared raises L{IllegalTransition}, so a bug shows up as a
precise error instead of a web of booleans quietly disagreeing.
"""

from __future__ import annotations

from enum import Enum
from typing import Generic, Iterable, Mapping, TypeVar

from txawsgi.errors import IllegalTransition



class State(Enum):
    """
    Base class for lifecycle states.

    Members are singletons, so identity is their hash: membership tests and
    transition lookups, on every request's hot path, skip C{Enum}'s
    Python-level C{__hash__}.

    On Python 3.11 every C{Run.RUNNING} is looked up through C{EnumType}'s
    C{__getattr__} hook, a method-wrapper call costing ten times a global:
    modules whose per-request paths test states bind the members to module
    names (C{_RUNNING = Run.RUNNING}) and use those there.
    """

    __hash__ = object.__hash__


S = TypeVar("S", bound=Enum)


class Machine(Generic[S]):
    """
    The current state of one lifecycle, and the edges it may take.
    """

    __slots__ = ("state", "_edges")

    def __init__(self, initial: S, edges: Mapping[S, Iterable[S]]) -> None:
        self.state = initial
        self._edges = edges

    def to(self, new: S) -> None:
        """
        Move to C{new}, or raise L{IllegalTransition}.
        """
        if new not in self._edges[self.state]:
            raise IllegalTransition(f"{self.state.name} -> {new.name}")
        self.state = new

    def __repr__(self) -> str:
        return f"<Machine {self.state.name}>"


def edges(states: type[S], table: Mapping[S, Iterable[S]]) -> dict[S, frozenset[S]]:
    """
    Freeze a transition table for the enum C{states}; every state needs a row
    (a final state's row is empty), so a forgotten state fails at import.
    """
    missing = set(states) - set(table)
    if missing:
        raise ValueError(f"no transitions declared for {sorted(s.name for s in missing)}")
    return {state: frozenset(targets) for state, targets in table.items()}

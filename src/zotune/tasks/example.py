"""The unit every task produces and every scorer consumes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One labelled multiple-choice example.

    Candidate ``i`` is scored as the log-likelihood of ``continuations[i]`` given
    ``contexts[i]``; the prediction is the candidate with the highest score. Most tasks share
    one context across candidates; WinoGrande puts each option in its own context and scores
    the same continuation.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    label: int

    def __post_init__(self) -> None:
        if len(self.contexts) != len(self.continuations):
            raise ValueError(
                f"Example has {len(self.contexts)} contexts but {len(self.continuations)} "
                "continuations; they must pair up one per candidate"
            )
        if not 0 <= self.label < len(self.continuations):
            raise ValueError(
                f"Example label {self.label} is out of range "
                f"for {len(self.continuations)} candidates"
            )

    @property
    def num_candidates(self) -> int:
        return len(self.continuations)

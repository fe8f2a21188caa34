"""The unit every task produces and every scorer consumes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One labelled example.

    Multiple choice: candidate ``i`` is scored as the log-likelihood of ``continuations[i]``
    given ``contexts[i]``; the prediction is the candidate with the highest score. Most tasks
    share one context across candidates; WinoGrande puts each option in its own context and
    scores the same continuation. ``correct`` lists every candidate counted right when more
    than ``label`` is (ReCoRD: the answer entity under several spellings); empty means
    ``label`` alone.

    Generation (``answers`` non-empty, SQuAD, DROP): one context, the prompt; one
    continuation, the gold answer as the model is trained to write it (label 0); ``answers``
    every gold answer the decoded text is scored against (F1 / EM take the max over them).
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    label: int
    answers: tuple[str, ...] = ()
    correct: tuple[int, ...] = ()
    # The surface-form calibration prompt (contexts, continuations) without the input, where
    # the task has one (MeZO's encode_sfc / verbalize_sfc); not part of the example's identity.
    calibration: tuple[tuple[str, ...], tuple[str, ...]] | None = field(
        default=None, compare=False
    )

    def __post_init__(self) -> None:
        if len(self.contexts) != len(self.continuations):
            raise ValueError(
                f"Example has {len(self.contexts)} contexts but {len(self.continuations)} "
                "continuations; they must pair up one per candidate"
            )
        for index in (self.label, *self.correct):
            if not 0 <= index < len(self.continuations):
                raise ValueError(
                    f"Example label {index} is out of range "
                    f"for {len(self.continuations)} candidates"
                )

    @property
    def num_candidates(self) -> int:
        return len(self.continuations)

    @property
    def generation(self) -> bool:
        """Scored by decoding and comparing with ``answers``, not by ranking candidates."""
        return bool(self.answers)

    def is_correct(self, prediction: int) -> bool:
        """Whether candidate ``prediction`` counts as right."""
        return prediction == self.label or prediction in self.correct

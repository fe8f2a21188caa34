"""What ``zotune profile`` measures (:class:`ProfileSpec`) and what it found
(:class:`ProfileResult`), and the grid of specs a command line asks for.

A *measurement* is one method (an optimizer key, ``inference`` for a no-grad forward, or
``mezo-ref`` for the MeZO-style reference step) on one model, tuning scheme and synthetic
batch of exactly B × T tokens; :mod:`zotune.profiling.measurement` says how it is taken.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .methods import all_methods

DEFAULT_MODEL = "random:opt-125m"


@dataclass(frozen=True)
class Settings:
    """What the measurements of one command share. ``model`` is a hub id, a local folder,
    ``smollm2-135m`` or ``random:<shape>`` (see :data:`zotune.models.random_shapes.SHAPES`)."""

    model: str = DEFAULT_MODEL
    batch_size: int = 16
    seq_len: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    steps: int = 3
    warmup: int = 1
    lr: float = 1e-6
    seed: int = 0
    attn_implementation: str | None = None
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    autocast: str | None = None  # half-precision compute over fp32 weights (mixed_precision)
    # Rows per forward: the batch's loss as the weighted mean of its parts (micro_batches).
    micro_batch_size: int | None = None
    compile: bool = False  # the forward compiled by zotune.compile_model
    matmul: str = "auto"  # model.matmul: half-precision products native or in fp32

    def precision(self) -> str:
        """``float32``, ``bfloat16`` (the weights' dtype) or ``autocast-bfloat16``, with
        ``+matmul=native`` (``float32``) when ``model.matmul`` is set and ``+compile`` when
        the forward is compiled."""
        base = self.dtype if self.autocast is None else f"autocast-{self.autocast}"
        base += f"+matmul={self.matmul}" if self.matmul != "auto" else ""
        return base + "+compile" if self.compile else base

    def settings(self) -> dict[str, Any]:
        """These settings as keywords, for a :class:`ProfileSpec` or another settings type."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Settings)}


@dataclass(frozen=True)
class ProfileSpec(Settings):
    """One measurement: ``method`` on the settings' model with tuning ``scheme``."""

    method: str = "zo-sgd"
    scheme: str = "full"
    # Optimizer options beyond lr (``{"hybrid_layers": 10}``, ``{"q": 4}``).
    options: dict[str, Any] = field(default_factory=dict)
    # Weights held in CPU memory by accelerate's cpu_offload, copied to ``device`` for each
    # module's forward (zotune.models.offload: zeroth-order steps move them in place).
    offload: bool = False

    def method_label(self) -> str:
        """``zo-sgd``, or ``zo-sgd hybrid_layers=10`` with options, ``zo-sgd [bfloat16]`` in
        another precision than fp32, ``zo-sgd [cpu-offload]`` with offloaded weights."""
        options = " ".join(f"{k}={v}" for k, v in self.options.items())
        label = f"{self.method} {options}" if options else self.method
        tags = [self.precision()] if self.precision() != "float32" else []
        tags += ["cpu-offload"] if self.offload else []
        return f"{label} [{', '.join(tags)}]" if tags else label

    def label(self) -> str:
        micro = f" micro={self.micro_batch_size}" if self.micro_batch_size else ""
        return (
            f"{self.method_label()} {self.scheme} {self.model} "
            f"B={self.batch_size} T={self.seq_len}{micro}"
        )

    def shape_label(self) -> str:
        """``16×64``, or ``16×64 /2`` when the batch goes through in micro-batches of 2."""
        micro = f" /{self.micro_batch_size}" if self.micro_batch_size else ""
        return f"{self.batch_size}×{self.seq_len}{micro}"

    @property
    def estimated(self) -> bool:
        """Whether the analytic estimate models this step (it does not model every option)."""
        from ..optim.registry import all_options

        declared = all_options()
        modelled = all(declared[key].modelled for key in self.options if key in declared)
        return modelled and not self.offload  # the model counts every weight on the device

    def check(self) -> None:
        from ..models.mixed_precision import check_autocast
        from ..tuning.registry import get_scheme

        check_autocast(self.autocast, self.dtype)
        if self.method not in all_methods():
            raise ValueError(
                f"unknown method {self.method!r} (choose from {', '.join(all_methods())})"
            )
        get_scheme(self.scheme)
        for name in ("batch_size", "seq_len", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"invalid {name}: {value!r} (must be an int >= 1)")
        micro = self.micro_batch_size
        if micro is not None and (isinstance(micro, bool) or not isinstance(micro, int)
                                  or micro < 1):
            raise ValueError(f"invalid micro_batch_size: {micro!r} (must be an int >= 1)")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"invalid threads: {self.threads!r} (must be an int >= 1)")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"invalid warmup: {self.warmup!r} (must be an int >= 0)")
        if self.options:
            from ..optim.registry import entry, names

            if self.method not in names():
                raise ValueError(f"--option applies to optimizers, not to {self.method}")
            accepted = entry(self.method).accepted()
            for key in self.options:
                if key not in accepted or key == "lr":
                    raise ValueError(f"--option {key}: not an option of {self.method}")
        if self.offload:
            self._check_offload()

    def _check_offload(self) -> None:
        """Offloaded weights are meta tensors in the model: only forwards (inference) and
        random-gradient estimates, which move the CPU storage in place, can use them."""
        from ..optim.registry import entry, names

        movable = self.method == "inference" or (
            self.method in names() and entry(self.method).finite_difference
        )
        if not movable:
            raise ValueError(
                f"--offload: {self.method} cannot run on offloaded weights (inference and the "
                "random-gradient ZO optimizers can)"
            )
        if self.scheme != "full":
            raise ValueError(
                f"--offload measures full fine-tuning (the offloaded weights are the trained "
                f"ones), not {self.scheme}"
            )


@dataclass
class ProfileResult:
    """What one measurement found; bytes are as :mod:`zotune.utils.measure` defines them."""

    spec: ProfileSpec
    seconds_per_step: float
    step_seconds: list[float]
    weights_bytes: int
    loaded_bytes: int
    peak_bytes: int
    peak_reset: bool
    isolated: bool
    trainable_parameters: int
    total_parameters: int
    forward_passes_per_step: int
    attn_implementation: str | None
    estimate: dict[str, Any] = field(default_factory=dict)
    hardware: str | None = None  # where it ran, read in the measuring process
    # How the model's half-precision products ran (zotune.models.matmul.matmul_mode): what
    # model.matmul auto resolved to in the measuring process.
    matmul: str | None = None
    # With repeats, every process's s/step (this result is the median process's own): one
    # process can run a row slower throughout, as its allocations happened to fall.
    process_seconds: list[float] = field(default_factory=list)

    @property
    def above_weights_bytes(self) -> int:
        """Peak during the timed steps minus the memory once the model was loaded and warm."""
        return max(0, self.peak_bytes - self.loaded_bytes)

    @property
    def memory_bytes(self) -> int:
        """Weights (counted) plus what the step adds on top of them (measured)."""
        return self.weights_bytes + self.above_weights_bytes

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory_bytes"] = self.memory_bytes
        data["above_weights_bytes"] = self.above_weights_bytes
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileResult:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        spec_names = {f.name for f in dataclasses.fields(ProfileSpec)}
        values["spec"] = ProfileSpec(**{k: v for k, v in data["spec"].items() if k in spec_names})
        return cls(**values)



def grid(
    methods: Sequence[str],
    *,
    schemes: Sequence[str] = ("full",),
    seq_lens: Sequence[int] = (64,),
    options: Sequence[dict[str, Any]] = ({},),
    offloads: Sequence[bool] = (False,),
    **common: Any,
) -> list[ProfileSpec]:
    """Specs for every (seq_len, scheme, method, options, offload), in that nesting order;
    ``options`` apply to the optimizers, so ``inference`` and ``mezo-ref`` get one row each;
    ``offloads=(False, True)`` puts each row with offloaded weights after its resident one."""
    from ..optim.registry import names

    return [
        ProfileSpec(
            method=method, scheme=scheme, seq_len=seq_len, options=dict(o), offload=offload,
            **common,
        )
        for seq_len in seq_lens
        for scheme in schemes
        for method in methods
        for o in (options if method in names() else ({},))
        for offload in offloads
    ]

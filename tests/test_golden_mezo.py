"""Golden trajectories: each BP-free optimizer against the research code's own step, written out.

The references are MeZO's and ZO-LLM's trainers as they run, in float64 on a tiny OPT:

* MeZO (princeton-nlp/MeZO, large_models/trainer.py): ``zo_step`` (757-789) draws
  ``zo_random_seed = np.random.randint(1000000000)``; ``zo_perturb_parameters`` (699-712) and
  ``zo_update`` (791-806) each call ``torch.manual_seed(zo_random_seed)`` and regenerate
  ``z = torch.normal(mean=0, std=1, size=param.size(), dtype=param.dtype)`` per trainable
  parameter in ``named_parameters`` order: +εz, −2εz, +εz, then
  θ ← θ − lr (projected_grad · z + λθ), no decay on biases and LayerNorms.
* ZO-LLM (ZO-Bench/ZO-LLM at bf210fa, zo-bench/trainer.py): the same probes, then per
  parameter ``param.grad = graddiff_times_z`` and ``self.optimizer.step()`` (``zo_step``,
  1005-1084), with graddiff_times_z = projected_grad · z, or ``np.sign(projected_grad) · z``
  for ``--trainer zo_sign_opt`` (1055-1058). The optimizer is torch's SGD (with
  ``--momentum``: ZO-SGD-MMT) or Adam for ``zo_sgd``/``zo_adam`` (314-324), and for
  ``zo_sign_opt``/``zo_conserv`` whatever ``--optimizer`` names (325-330): its default,
  ``adamw`` (run.py:74), leaves the Trainer's transformers AdamW in place, which is what the
  sweep files (passing no ``--optimizer``) ran. ``zo_conserv_step`` (1251-1337) and
  ``forward_grad_step`` (1357-1424, ``torch.func.jvp`` with v = ``torch.randn_like`` per
  parameter after ``torch.manual_seed``) are written out below too.

zotune reaches every reference through public options only: ``distribution="mezo"`` draws
MeZO's stream (numpy step seeds from ``seed``, ``torch.normal`` per tensor in order), and
``base``/``sign_of`` select the released Sign and Cons. One relabelling: ZO-LLM draws each
step's sparse-mask seed from the same numpy stream just before the step's z seed
(trainer.py:469-470, ``sparse_gradient_resample_steps`` = 1), so its z seeds are every
second draw; the references here take one draw per step, as MeZO does. Float64 keeps every
comparison at rounding level: parameters equal to 1e-12 after 20 steps (ZO-SGD, ZO-Adam) or
10 (the others, to keep the suite fast).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import jvp

from golden_helpers import SEED, batches, lm_loss, no_decay, tiny_opt
from zotune.optim import create_optimizer

STEPS = 20  # MeZO's ZO-SGD and ZO-Adam; ZO-LLM's other optimizers take ZO_LLM_STEPS
ZO_LLM_STEPS = 10
EPS = 1e-3


class TransformersAdamW(torch.optim.Optimizer):
    """transformers 4.28.1's ``AdamW.step`` (optimization.py:420-466), the Trainer's
    ``adamw_hf`` with its defaults (training_args.py:669-672: betas 0.9/0.999, eps 1e-8,
    correct_bias on); groups as ``Trainer.create_optimizer`` builds them (trainer.py:
    1071-1086): decay on all but biases and LayerNorm weights."""

    def __init__(self, named, lr, weight_decay=0.0):
        groups = [
            {"params": [p for n, p in named if not no_decay(n)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
        ]
        super().__init__(groups, {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                beta1, beta2 = group["betas"]
                state["step"] += 1
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                denom = state["exp_avg_sq"].sqrt().add_(group["eps"])
                step_size = group["lr"] * math.sqrt(1.0 - beta2 ** state["step"]) / (
                    1.0 - beta1 ** state["step"]
                )
                p.addcdiv_(state["exp_avg"], denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])


class Reference:
    """One reference run: the trainer's state (parameters, numpy stream, optimizer)."""

    def __init__(self, model, optimizer: str, lr: float, weight_decay: float = 0.0):
        self.model = model
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.lr, self.weight_decay = lr, weight_decay
        self.numpy_seeds = np.random.RandomState(SEED)
        params = [p for _, p in self.named]
        self.optimizer = {
            "none": None,
            "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.0),
            "momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9),
            "adam": lambda: torch.optim.Adam(params, lr=lr),
            "adamw": lambda: TransformersAdamW(self.named, lr, weight_decay),
        }[optimizer]
        self.optimizer = self.optimizer() if self.optimizer else None

    def next_seed(self) -> int:
        return int(self.numpy_seeds.randint(1_000_000_000))

    def perturb(self, seed: int, scaling_factor: float) -> None:
        """zo_perturb_parameters (MeZO 699-712; ZO-LLM 716-733)."""
        torch.manual_seed(seed)
        for _, param in self.named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            param.data = param.data + scaling_factor * z * EPS

    def probe(self, ids, seed: int) -> float:
        """The two-point probes of zo_step (MeZO 772-786; ZO-LLM 1022-1043)."""
        self.perturb(seed, 1)
        loss1 = lm_loss(self.model, ids)
        self.perturb(seed, -2)
        loss2 = lm_loss(self.model, ids)
        self.perturb(seed, 1)
        return ((loss1 - loss2) / (2 * EPS)).item()

    def mezo_update(self, seed: int, projected_grad: float) -> None:
        """MeZO's zo_update (791-806)."""
        torch.manual_seed(seed)
        for name, param in self.named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            if no_decay(name):
                param.data = param.data - self.lr * (projected_grad * z)
            else:
                param.data = param.data - self.lr * (
                    projected_grad * z + self.weight_decay * param.data
                )

    def optimizer_update(self, seed: int, projected_grad: float, form: str, sign=1.0) -> None:
        """ZO-LLM's per-parameter optimizer steps (zo_step 1045-1073; update_params of
        zo_conserv_step 1288-1315, whose ``sign`` scales the fed gradient). ``form``:
        "c" feeds projected_grad·z, "sign(c)" np.sign(projected_grad)·z (1058), and
        "sign(cz)" the paper's elementwise sign, ZO-LLM's commented-out signOpt_mul_sign
        (1060) without its extra lr factor (the optimizer applies lr)."""
        torch.manual_seed(seed)
        for _, param in self.named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            if form == "sign(c)":
                graddiff_times_z = np.sign(projected_grad) * z
            elif form == "sign(cz)":
                graddiff_times_z = torch.sign(projected_grad * z)
            else:
                graddiff_times_z = projected_grad * z
            param.grad = sign * graddiff_times_z
            self.optimizer.step()
            param.grad = None

    @torch.no_grad()
    def zo_step(self, ids, form: str) -> None:
        seed = self.next_seed()
        projected_grad = self.probe(ids, seed)
        if self.optimizer is None:
            self.mezo_update(seed, projected_grad)
        else:
            self.optimizer_update(seed, projected_grad, form)

    @torch.no_grad()
    def conservative_step(self, ids) -> None:
        """ZO-LLM's zo_conserv_step (1251-1337)."""
        loss0 = lm_loss(self.model, ids)
        seed = self.next_seed()
        projected_grad = self.probe(ids, seed)
        self.optimizer_update(seed, projected_grad, "c")
        loss1 = lm_loss(self.model, ids)
        self.optimizer_update(seed, projected_grad, "c", sign=-2.0)
        loss2 = lm_loss(self.model, ids)
        if loss1 > loss0:
            if loss0 < loss2:
                self.optimizer_update(seed, projected_grad, "c")
        elif loss1 < loss2:
            self.optimizer_update(seed, projected_grad, "c", sign=2.0)

    def forward_grad_step(self, ids) -> None:
        """ZO-LLM's forward_grad_step (1357-1424)."""
        seed = self.next_seed()
        torch.manual_seed(seed)
        vs = [torch.randn_like(p) for _, p in self.named]
        names = [n for n, _ in self.named]
        buffers = dict(self.model.named_buffers())

        def f(params):
            return lm_loss(self.model, ids, {**dict(zip(names, params, strict=True)), **buffers})

        _, jvp_ = jvp(f, ([p for _, p in self.named],), (vs,))
        with torch.no_grad():
            for v, (n, p) in zip(vs, self.named, strict=True):
                if no_decay(n):
                    p.data.sub_(self.lr * (v * jvp_))
                else:
                    p.data.sub_(self.lr * (v * jvp_ + self.weight_decay * p.data))


# (id, zotune key, zotune options, reference optimizer, reference step, update form)
CASES = [
    ("zo-sgd", "zo-sgd", {"lr": 1e-3}, "none", "zo", "c"),
    ("zo-sgd-weight-decay", "zo-sgd", {"lr": 1e-3, "weight_decay": 0.1}, "none", "zo", "c"),
    ("zo-adam", "zo-adam", {"lr": 1e-3}, "adam", "zo", "c"),
    ("zo-sgd-mmt", "zo-sgd-mmt", {"lr": 1e-3, "momentum": 0.9}, "momentum", "zo", "c"),
    ("zo-sgd-sign-paper", "zo-sgd-sign", {"lr": 1e-4}, "sgd", "zo", "sign(cz)"),
    (
        "zo-sgd-sign-released",
        "zo-sgd-sign",
        {"lr": 1e-4, "base": "adamw", "sign_of": "coefficient"},
        "adamw",
        "zo",
        "sign(c)",
    ),
    (
        "zo-sgd-sign-released-weight-decay",
        "zo-sgd-sign",
        {"lr": 1e-4, "base": "adamw", "sign_of": "coefficient", "weight_decay": 0.1},
        "adamw",
        "zo",
        "sign(c)",
    ),
    ("zo-sgd-cons-paper", "zo-sgd-cons", {"lr": 1e-3}, "sgd", "conservative", "c"),
    ("zo-sgd-cons-released", "zo-sgd-cons", {"lr": 1e-4, "base": "adamw"}, "adamw",
     "conservative", "c"),
    ("forward-grad", "forward-grad", {"lr": 1e-3}, "none", "forward-grad", "c"),
    ("forward-grad-weight-decay", "forward-grad", {"lr": 1e-3, "weight_decay": 0.1}, "none",
     "forward-grad", "c"),
]


@pytest.mark.parametrize(
    ("case", "key", "options", "reference_optimizer", "kind", "form"), CASES,
    ids=[c[0] for c in CASES],
)
def test_zotune_follows_the_reference_code_step_for_step(
    case, key, options, reference_optimizer, kind, form
):
    data = batches(STEPS if key in ("zo-sgd", "zo-adam") else ZO_LLM_STEPS)
    reference_model, zotune_model = tiny_opt(), tiny_opt()
    start = [p.detach().clone() for p in zotune_model.parameters()]
    reference = Reference(
        reference_model, reference_optimizer, options["lr"], options.get("weight_decay", 0.0)
    )
    zo_options = {} if key == "forward-grad" else {"eps": EPS}
    optimizer = create_optimizer(
        key, zotune_model, distribution="mezo", seed=SEED, **zo_options, **options
    )
    for ids in data:
        if kind == "zo":
            reference.zo_step(ids, form)
        elif kind == "conservative":
            reference.conservative_step(ids)
        else:
            reference.forward_grad_step(ids)
        optimizer.step(lambda ids=ids: lm_loss(zotune_model, ids))
    ours = [p.detach() for p in zotune_model.parameters()]
    theirs = [p.detach() for p in reference_model.parameters()]
    moved = max((a - s).abs().max().item() for a, s in zip(ours, start, strict=True))
    assert moved > 1e-4  # the trajectories went somewhere
    for mine, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-12)


def test_the_paper_and_released_forms_differ():
    """The options change the trajectory (else the golden cases above could not tell them
    apart): Sign's two forms and Cons's two bases end at different parameters."""
    ends = {}
    for name, key, options in [
        ("sign-paper", "zo-sgd-sign", {}),
        ("sign-released", "zo-sgd-sign", {"base": "adamw", "sign_of": "coefficient"}),
        ("cons-paper", "zo-sgd-cons", {}),
        ("cons-released", "zo-sgd-cons", {"base": "adamw"}),
    ]:
        model = tiny_opt()
        optimizer = create_optimizer(key, model, lr=1e-4, distribution="mezo", **options)
        for ids in batches(3):
            optimizer.step(lambda ids=ids, model=model: lm_loss(model, ids))
        ends[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (ends["sign-paper"] - ends["sign-released"]).abs().max() > 1e-6
    assert (ends["cons-paper"] - ends["cons-released"]).abs().max() > 1e-6

"""``ZOTrainer``: a Hugging Face ``Trainer`` whose training step is a zotune optimizer's step.

An existing ``Trainer`` script switches to zeroth-order fine-tuning by changing the class and
naming the optimizer::

    trainer = ZOTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                        zo_optimizer="zo-sgd", zo_options={"eps": 1e-3})

``zo_optimizer`` is any registry key (``zotune.optim.registry``; the first-order ones too),
``zo_options`` its options as a dict (``lr`` is ``TrainingArguments.learning_rate``; ``seed``
is ``TrainingArguments.seed`` unless given; ``weight_decay`` is the arguments' where the
optimizer takes it). Directions are drawn from the optimizer's seed stream, which its state
dict carries: a checkpoint saves it in ``optimizer.pt`` and ``train(resume_from_checkpoint=…)``
restores it, so a resumed run draws the same directions as the run it continues.

What ``TrainingArguments`` mean here:

* as in ``Trainer``: ``max_steps``/epochs, ``logging_steps``, ``eval_strategy``/``eval_steps``,
  ``save_strategy``/``save_steps``, ``lr_scheduler_type`` and warmup (the schedulers drive
  the zotune optimizer's param groups), ``seed``, ``report_to``;
* ``gradient_accumulation_steps`` = k: a ZO step evaluates each probe's loss over the k
  micro-batches at the same perturbation (loss accumulation: the estimate of one k-times
  larger batch, the activations of one micro-batch); a first-order step accumulates
  gradients as ``Trainer`` does;
* not applied: ``max_grad_norm`` (ZO has no gradient; a zotune FO optimizer clips through
  its own ``max_grad_norm`` option), fp16 loss scaling (autocast still applies to the
  forward passes) and ``optim``/``optim_args`` (the optimizer is ``zo_optimizer``). The
  trainer says so once, at start-up, with a warning. A ZO step has no gradient, so no
  ``grad_norm`` is logged (Trainer would log the norm of absent gradients, 0).

Probes run in eval mode (dropout off: a ZO difference needs the same function at θ ± εz);
first-order steps run in train mode.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers import Trainer

from ..optim import create_optimizer
from ..optim.registry import entry


class StepMadeOptimizer(torch.optim.Optimizer):
    """The zotune optimizer as ``Trainer``'s loop sees it.

    ``ZOTrainer.training_step`` makes the step itself (a ZO step needs the loss closure); the
    loop's later ``optimizer.step()`` (no closure) has nothing left to do. Param groups,
    state and the state dict are the zotune optimizer's own, so schedulers and checkpoints
    act on it. (Like accelerate's ``AcceleratedOptimizer``, a view that does not call
    ``Optimizer.__init__``.)
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups) -> None:
        self.optimizer.param_groups = groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self):
        return self.optimizer.defaults

    def step(self, closure=None):
        return None if closure is None else self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"StepMadeOptimizer({self.optimizer!r})"


class ZOTrainer(Trainer):
    """``transformers.Trainer`` with a zotune optimizer's step (see the module docstring)."""

    def __init__(
        self,
        *args: Any,
        zo_optimizer: str = "zo-sgd",
        zo_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.zo_entry = entry(zo_optimizer)  # an unknown key fails here, naming the choices
        self.zo_optimizer = zo_optimizer
        self.zo_options = dict(zo_options or {})
        if "lr" in self.zo_options:
            raise ValueError(
                "zo_options['lr']: the learning rate is TrainingArguments.learning_rate"
            )
        unknown = [k for k in self.zo_options if k not in self.zo_entry.accepted()]
        if unknown:
            raise ValueError(f"zo_options[{unknown[0]!r}] does not apply to {zo_optimizer}")
        if self.zo_entry.strategy(**self.zo_options).asks_for_batches:
            raise ValueError(
                f"{zo_optimizer} asks the training loop for batches of its own (an anchor "
                "batch every few steps), which Trainer's loop cannot supply: use zotune train"
            )
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers and optimizers[0] is not None:
            raise ValueError("ZOTrainer builds its optimizer from zo_optimizer; pass no optimizers")
        super().__init__(*args, **kwargs)
        self.pending_inputs: list[dict[str, Any]] = []
        self.zotune_optimizer: torch.optim.Optimizer | None = None
        self._warn_untranslated()

    @property
    def first_order(self) -> bool:
        return self.zo_entry.first_order

    def _warn_untranslated(self) -> None:
        """One warning naming the TrainingArguments this trainer does not apply."""
        args, notes = self.args, []
        if args.max_grad_norm and args.max_grad_norm > 0:
            notes.append(
                f"max_grad_norm={args.max_grad_norm} is not applied "
                + ("(use the optimizer's max_grad_norm option)" if self.first_order
                   else "(a zeroth-order step has no gradient to clip)")
            )
        if args.gradient_accumulation_steps > 1 and not self.first_order:
            notes.append(
                f"gradient_accumulation_steps={args.gradient_accumulation_steps} accumulates "
                "the loss: each probe is evaluated over the micro-batches at the same "
                "perturbation, one step per accumulated batch"
            )
        if args.fp16:
            notes.append("fp16 loss scaling is not applied (autocast still is)")
        default_optim = type(args).__dataclass_fields__["optim"].default
        optim = getattr(args.optim, "value", args.optim)
        if optim != getattr(default_optim, "value", default_optim) or args.optim_args:
            notes.append(
                f"optim={optim!r}" + (f", optim_args={args.optim_args!r}" if args.optim_args
                                      else "")
                + f" is not used: the optimizer is zo_optimizer={self.zo_optimizer!r}"
            )
        if notes:
            warnings.warn(f"ZOTrainer ({self.zo_optimizer}): " + "; ".join(notes), stacklevel=3)

    def _clip_grad_norm(self, model):
        return None  # max_grad_norm is not applied (warned at start-up)

    def _get_grad_norm(self, model, grad_norm=None):
        if not self.first_order:
            return None  # a ZO step leaves no gradient: no grad_norm is logged
        return super()._get_grad_norm(model, grad_norm)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            model = self.model if model is None else model
            accepted = self.zo_entry.accepted()
            options = dict(self.zo_options)
            if "seed" in accepted:
                options.setdefault("seed", self.args.seed)
            if "weight_decay" in accepted and self.args.weight_decay:
                options.setdefault("weight_decay", self.args.weight_decay)
            optimizer = create_optimizer(
                self.zo_optimizer, model, lr=self.args.learning_rate, **options
            )
            self.zotune_optimizer = optimizer
            self.optimizer = StepMadeOptimizer(optimizer)
        return self.optimizer

    def _loss_is_scaled(self, num_items_in_batch) -> bool:
        """Whether compute_loss already divides by the whole accumulated batch (as Trainer
        decides in ``training_step``)."""
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return self.loss_is_scaled_for_ga
        return (
            self.model_accepts_loss_kwargs and num_items_in_batch is not None
        ) or self.compute_loss_func is not None

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Collect the micro-batches of one accumulated batch; on its last one, make the
        zotune step over all of them. Returns the step's loss on its last micro-batch (0 on
        the others), so that Trainer's running sum logs the mean loss per step."""
        self.pending_inputs.append(self._prepare_inputs(inputs))
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        parts, self.pending_inputs = self.pending_inputs, []
        scale = 1.0 if self._loss_is_scaled(num_items_in_batch) else 1.0 / len(parts)

        def closure() -> torch.Tensor:
            total = None
            for part in parts:
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, part, num_items_in_batch=num_items_in_batch)
                if self.args.n_gpu > 1:
                    loss = loss.mean()
                loss = loss * scale
                if torch.is_grad_enabled():  # a first-order step: accumulate the gradients
                    loss.backward()
                    loss = loss.detach()
                total = loss if total is None else total + loss
            return total

        model.train(self.first_order)
        try:
            loss = self.zotune_optimizer.step(closure)
        finally:
            model.train()
        return loss.detach().to(self.args.device)


__all__ = ["StepMadeOptimizer", "ZOTrainer"]

"""Profiling: what a training step costs in memory and time, measured and predicted.

* :mod:`.memory_model` and :mod:`.activations`: the analytic memory model (weights,
  gradients, optimizer state, direction scratch, activations), read from the optimizer
  registry and the model's shape;
* :mod:`.spec`, :mod:`.build`, :mod:`.measurement`, :mod:`.worker`: one measurement (a
  method on a model, scheme and synthetic batch), taken in this process or a fresh one;
* :mod:`.methods`: the methods a profile can measure (every registered optimizer and two
  references);
* :mod:`.estimates`: the memory model alone, on a meta-device model of any size;
* :mod:`.step_cost`: a ZO step against its two forwards and the MeZO-style step of
  :mod:`.mezo_reference`;
* :mod:`.traffic`: bytes each process communicates per step in distributed training;
* :mod:`.render`, :mod:`.results`, :mod:`.plot`: tables, Markdown pages, the JSON file and
  the memory-against-sequence-length figure;
* :mod:`.command`: the ``zotune profile`` subcommand.

Nothing is imported here, so loading the ``zotune profile`` subcommand (:mod:`.command`)
stays cheap; the measuring modules load torch and transformers.
"""

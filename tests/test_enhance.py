"""Block-wise, hybrid ZO/FO and sparsity-induced ZO (zotune.enhance) on tiny random models."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from zotune import cli
from zotune.config import optimizer_option_types
from zotune.enhance import MaskedDirectionSampler, partition, split_hybrid
from zotune.enhance.blocks import block_names, find_layers
from zotune.enhance.sparse import pack_bits, tensor_sparsities, unpack_bits
from zotune.estimators import DirectionSampler, IndexedParam
from zotune.optim import OPTIMIZERS, ZEROTH_ORDER, create_optimizer

SHAPES = ["tiny-llama", "tiny-opt", "tiny-mistral", "tiny-roberta"]


def lm_batch(model, rows: int = 4, length: int = 12):
    """A fixed token batch and its LM loss closure (RoBERTa's LM loss works the same way)."""
    ids = torch.randint(5, 300, (rows, length), generator=torch.Generator().manual_seed(0))
    return lambda: model(input_ids=ids, labels=ids).loss


def trainable_ids(model):
    return [id(p) for p in model.parameters() if p.requires_grad]


# Block partition ------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["mlp-attn", "transformer-block", "layer", "sublayer", "linear"])
@pytest.mark.parametrize("scheme", ["full", "lora", "prefix"])
@pytest.mark.parametrize("shape", SHAPES)
def test_partition_covers_every_trainable_parameter_exactly_once(
    shape, scheme, level, tiny_model
):
    model, _ = tiny_model(shape, scheme)
    groups = partition(model, level)
    members = [id(p) for group in groups for p in group["params"]]
    assert sorted(members) == sorted(trainable_ids(model))
    assert len(members) == len(set(members))
    assert len({group["block"] for group in groups}) == len(groups)


@pytest.mark.parametrize("shape", SHAPES)
def test_layer_blocks_follow_the_module_tree(shape, tiny_model):
    model, _ = tiny_model(shape)
    blocks = [group["block"] for group in partition(model, "layer")]
    assert blocks == ["embeddings", "layer.0", "layer.1", "head"]
    names = block_names(model, "layer")
    final = ("model.decoder.final_layer_norm", "model.norm")
    final_norms = [n for n in names if n.startswith(final)]
    assert all(names[n] == "head" for n in final_norms)  # OPT registers it before its layers
    sub = {group["block"] for group in partition(model, "sublayer")}
    assert {"layer.0.attn", "layer.0.mlp", "layer.1.attn", "layer.1.mlp"} <= sub


# ZO-LLM's mlp-attn level (zo-bench/utils.py OPT_PERTURBATION_LEVEL_TO_REGEX): per layer the
# attention module, fc1, fc2 and both LayerNorms; each embedding; the final LayerNorm.
OPT_MLP_ATTN = [
    "embeddings.model.decoder.embed_tokens",
    "embeddings.model.decoder.embed_positions",
    *[
        f"layer.{i}.{part}"
        for i in range(2)
        for part in ("attn", "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm")
    ],
    "head.model.decoder.final_layer_norm",
]
LLAMA_MLP_ATTN = [
    "embeddings.model.embed_tokens",
    *[
        f"layer.{i}.{part}"
        for i in range(2)
        for part in (
            "attn",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        )
    ],
    "head.model.norm",
    "head.lm_head",  # tiny-llama's head is untied
]


@pytest.mark.parametrize(
    ("shape", "expected", "attention"),
    [
        ("tiny-opt", OPT_MLP_ATTN, ("q_proj", "k_proj", "v_proj", "out_proj")),
        ("tiny-llama", LLAMA_MLP_ATTN, ("q_proj", "k_proj", "v_proj", "o_proj")),
    ],
)
def test_mlp_attn_is_the_default_and_zo_bench_partition(shape, expected, attention, tiny_model):
    model, _ = tiny_model(shape)
    groups = partition(model)
    assert [g["block"] for g in groups] == expected
    layer_count = model.config.num_hidden_layers
    assert len(groups) == (5 if shape == "tiny-opt" else 6) * layer_count + 3
    names = block_names(model, "mlp-attn")
    attn = {n for n, block in names.items() if block == "layer.0.attn"}
    assert {n.split(".")[-2] for n in attn} == set(attention)  # projections, never a norm


# ZO-LLM's default level, transformer-block (zo-bench/utils.py:27-29): each decoder layer, each
# `embed_*` module, the final LayerNorm; L + 3 blocks on OPT (27 for 24 layers).
OPT_TRANSFORMER_BLOCK = [
    "embeddings.model.decoder.embed_tokens",
    "embeddings.model.decoder.embed_positions",
    "layer.0",
    "layer.1",
    "head.model.decoder.final_layer_norm",
]
LLAMA_TRANSFORMER_BLOCK = [
    "embeddings.model.embed_tokens",
    "layer.0",
    "layer.1",
    "head.model.norm",
    "head.lm_head",  # untied: a block of its own (ZO-LLM's regex would never perturb it)
]


@pytest.mark.parametrize(
    ("shape", "expected"),
    [("tiny-opt", OPT_TRANSFORMER_BLOCK), ("tiny-llama", LLAMA_TRANSFORMER_BLOCK)],
)
def test_transformer_block_is_zo_llms_default_partition(shape, expected, tiny_model):
    model, _ = tiny_model(shape)
    groups = partition(model, "transformer-block")
    assert [g["block"] for g in groups] == expected
    assert len(groups) == model.config.num_hidden_layers + 3
    _, layers = find_layers(model)
    (first_layer,) = [g for g in groups if g["block"] == "layer.0"]
    assert {id(p) for p in first_layer["params"]} == {id(p) for p in layers[0].parameters()}


def test_transformer_block_counts_27_blocks_on_a_24_layer_opt():
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=64, hidden_size=8, word_embed_proj_dim=8, ffn_dim=16,
                       num_hidden_layers=24, num_attention_heads=2, max_position_embeddings=32)
    model = OPTForCausalLM(config)
    assert len(partition(model, "transformer-block")) == 27  # ZO-LLM's count
    assert len(partition(model, "layer")) == 26  # the paper text's count


def test_mlp_attn_blocks_of_lora_are_the_attention_modules(tiny_model):
    model, _ = tiny_model("tiny-opt", "lora")
    assert [g["block"] for g in partition(model)] == ["layer.0.attn", "layer.1.attn"]


def test_lora_blocks_hold_only_adapters(tiny_model):
    model, _ = tiny_model("tiny-llama", "lora")
    groups = partition(model, "layer")
    assert [g["block"] for g in groups] == ["layer.0", "layer.1"]
    assert all(len(g["params"]) == 4 for g in groups)  # q and v: lora_A and lora_B each


@pytest.mark.parametrize("mode", ["coordinate", "all"])
def test_blocks_get_distinct_directions_and_two_forwards_each(mode, tiny_model):
    model, _ = tiny_model("tiny-llama")
    loss = lm_batch(model)
    opt = create_optimizer(
        "zo-sgd", model, lr=0.0, block_level="layer", block_mode=mode, distribution="gaussian"
    )
    blocks = [[p for p in g["params"]] for g in opt.param_groups]
    start = [p.detach().clone() for p in model.parameters()]
    moved: list[set[int]] = []
    probes: list[list[torch.Tensor]] = []

    def closure():
        deltas = [p.detach() - s for p, s in zip(model.parameters(), start, strict=True)]
        # A restored block may sit an ulp off θ; a probe moves by about ε = 1e-3.
        moved.append({i for i, d in enumerate(deltas) if d.abs().max() > 1e-5})
        probes.append(deltas)
        return loss()

    opt.step(closure)
    assert opt.forward_passes_per_step == 2 * len(blocks) == len(moved) == 8
    index = {id(p): i for i, p in enumerate(model.parameters())}
    for number, block in enumerate(blocks):
        assert moved[2 * number] == {index[id(p)] for p in block}  # z_b lives on block b only
    # layer.0 and layer.1 have the same shapes: their directions must still differ.
    z0 = [probes[2][index[id(p)]] for p in blocks[1]]
    z1 = [probes[4][index[id(p)]] for p in blocks[2]]
    for a, b in zip(z0, z1, strict=True):
        assert not torch.allclose(a, b) and not torch.allclose(a, -b)


# Sparse masks ---------------------------------------------------------------------------------


def masked_sampler(sparsity, mask_every=1, distribution="gaussian", numel=200_000):
    param = torch.zeros(numel)
    sampler = MaskedDirectionSampler(
        DirectionSampler(distribution), {0: sparsity}, seed=3, mask_every=mask_every
    )
    return sampler, param


def kept(sampler, param, seed=11):
    return sampler.direction(param, seed, 0) != 0


@pytest.mark.parametrize("distribution", ["gaussian", "table"])
@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.9])
def test_mask_density_is_exact_and_stable_across_resampling(sparsity, distribution):
    sampler, param = masked_sampler(sparsity, mask_every=3, distribution=distribution)
    n, density = param.numel(), 1 - sparsity
    tolerance = 5 * math.sqrt(density * (1 - density) / n)  # binomial, 5 sigma
    masks = []
    for step in range(7):
        sampler.set_step(step)
        mask = kept(sampler, param)
        assert abs(mask.float().mean().item() - density) < tolerance
        assert torch.equal(mask, kept(sampler, param, seed=99))  # same mask for every query
        masks.append(mask)
    assert torch.equal(masks[0], masks[2]) and torch.equal(masks[3], masks[5])
    overlap = (masks[0] & masks[3]).float().mean().item()
    assert abs(overlap - density**2) < 5 * tolerance  # resampled: independent of the last one


def research_code_kept_fraction(ratio: float, numel: int = 200_000) -> float:
    """ZO-LLM's rule written out: ``z[randn < ratio] = 0`` (zo-bench/trainer.py with
    ``fast_random_mask_like`` from zo-bench/gradient_pruning/pruning_utils.py)."""
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(numel, generator=gen)
    z[torch.empty_like(z).normal_(generator=gen) < ratio] = 0
    return (z != 0).float().mean().item()


@pytest.mark.parametrize("distribution", ["gaussian", "table"])
@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.5])
def test_zo_llm_mode_masks_as_the_research_code_and_the_default_masks_exactly(
    ratio, distribution
):
    numel = 200_000
    research = research_code_kept_fraction(ratio, numel)
    tolerance = 5 * math.sqrt(0.25 / numel)  # five binomial standard deviations, at worst
    assert abs(research - (1 - ratio)) > 0.15  # the research rule is not "mask a fraction r"
    param = torch.zeros(numel)
    masked = tensor_sparsities([IndexedParam(0, param)], ratio, "uniform-zo-llm")
    sampler = MaskedDirectionSampler(DirectionSampler(distribution), masked, seed=3)
    assert abs(kept(sampler, param).float().mean().item() - research) < 2 * tolerance
    exact, param = masked_sampler(ratio, distribution=distribution, numel=numel)
    assert abs(kept(exact, param).float().mean().item() - (1 - ratio)) < tolerance


def test_zo_llm_magnitude_mode_masks_phi_of_each_tensors_ratio():
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(4000, generator=gen) * 0.01
    items = [IndexedParam(0, small), IndexedParam(5, torch.ones(4))]
    exact = tensor_sparsities(items, 0.5, "magnitude")
    research = tensor_sparsities(items, 0.5, "magnitude-zo-llm")
    assert exact[5] == 0 and research[5] == 0.5  # ZO-LLM masks half of a tensor it keeps whole
    assert research[0] == pytest.approx(0.5 * (1 + math.erf(exact[0] / math.sqrt(2))))


def test_magnitude_sparsity_follows_a_global_quantile():
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(4000, generator=gen) * 0.01
    large = torch.randn(4000, generator=gen)
    items = [IndexedParam(0, small), IndexedParam(5, large)]
    ratios = tensor_sparsities(items, 0.5, "magnitude")
    assert ratios[0] > 0.9 and ratios[5] < 0.1  # the small-magnitude tensor is pruned most
    assert abs((ratios[0] + ratios[5]) / 2 - 0.5) < 0.01
    assert tensor_sparsities(items, 0.3, "uniform") == {0: 0.3, 5: 0.3}


def test_sparse_update_touches_only_the_kept_entries():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(50_000, generator=gen)
    x = torch.zeros(50_000, requires_grad=True)
    opt = create_optimizer("zo-sgd", [x], lr=0.01, sparsity=0.7, distribution="gaussian")
    opt.step(lambda: ((x - target) ** 2).mean())
    changed = (x.detach() != 0).float().mean().item()
    assert abs(changed - 0.3) < 0.01
    sampler = opt.estimator.sampler
    scratch = [*sampler._mask_scratch.values(), *sampler._uniforms.values()]
    assert scratch and all(t.numel() <= sampler.chunk_numel for t in scratch)  # no stored mask


# Hybrid ZO/FO ---------------------------------------------------------------------------------


def test_hybrid_split_puts_shallow_layers_in_the_zo_part(tiny_model):
    model, _ = tiny_model("tiny-llama")
    names = {id(p): n for n, p in model.named_parameters()}
    parts = {g["part"]: [names[id(p)] for p in g["params"]] for g in split_hybrid(model, 1)}
    assert all(n.startswith(("model.embed_tokens", "model.layers.0.")) for n in parts["zo"])
    assert all(n.startswith(("model.layers.1.", "model.norm", "lm_head")) for n in parts["fo"])
    assert [g["part"] for g in split_hybrid(model, 0)] == ["fo"]
    assert [g["part"] for g in split_hybrid(model, 1.0)] == ["zo"]
    assert {g["part"] for g in split_hybrid(model, 0.5)} == {"zo", "fo"}


def test_hybrid_first_order_part_gets_exactly_autograds_gradient(tiny_model):
    model, _ = tiny_model("tiny-llama")
    reference = copy.deepcopy(model)
    lr = 0.1
    opt = create_optimizer("zo-sgd", model, lr=lr, hybrid_layers=1)
    zo_ids = {id(p) for g in opt.param_groups if g["part"] == "zo" for p in g["params"]}
    fo_names = [n for n, p in model.named_parameters() if id(p) not in zo_ids]
    for name, param in reference.named_parameters():
        param.requires_grad_(name in fo_names)
    lm_batch(reference)().backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step(lm_batch(model))
    params = dict(model.named_parameters())
    for name, ref in reference.named_parameters():
        if name in fo_names:
            torch.testing.assert_close(
                params[name].detach(), before[name] - lr * ref.grad, rtol=1e-6, atol=1e-7
            )
            assert params[name].grad is None  # freed after the update
        else:
            assert not torch.equal(params[name].detach(), before[name])  # moved by ZO
            assert params[name].requires_grad and params[name].grad is None
    assert opt.forward_passes_per_step == 3


def saved_activation_bytes(model, options) -> int:
    opt = create_optimizer("zo-sgd", model, lr=0.0, **options)
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        opt.step(lm_batch(model, rows=8, length=32))
    return total


def test_hybrid_saves_fewer_activations_than_first_order(tiny_model):
    model, _ = tiny_model("tiny-llama")
    zeroth = saved_activation_bytes(model, {"hybrid_layers": 2})
    hybrid = saved_activation_bytes(model, {"hybrid_layers": 1})
    first = saved_activation_bytes(model, {"hybrid_layers": 0})
    assert zeroth == 0 < hybrid < first
    # One of two layers is kept out of the graph: its activations are about a layer's worth.
    assert hybrid < 0.9 * first


# Every enhancement trains -----------------------------------------------------------------------

ENHANCEMENTS = [
    {"block_level": "mlp-attn"},
    {"block_level": "layer"},
    {"block_level": "sublayer", "block_mode": "all"},
    {"hybrid_layers": 1},
    {"sparsity": 0.5},
    {"sparsity": 0.5, "sparsity_mode": "magnitude", "mask_every": 5},
    {"sparsity": 0.2, "sparsity_mode": "uniform-zo-llm"},
]


@pytest.mark.parametrize("name", ["zo-sgd", "zo-adam"])
@pytest.mark.parametrize("options", ENHANCEMENTS, ids=lambda o: "-".join(map(str, o.values())))
def test_each_enhancement_reduces_the_loss(options, name, tiny_model):
    model, _ = tiny_model("tiny-llama")
    loss = lm_batch(model)
    opt = create_optimizer(name, model, lr=3e-3 if name == "zo-adam" else 1e-2, **options)
    with torch.no_grad():
        start = float(loss())
    for _ in range(30):
        opt.step(loss)
    with torch.no_grad():
        assert float(loss()) < start - 0.02


# Invalid options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "error", "match"),
    [
        ("zo-sgd", {"block_level": "row"}, ValueError, "Unknown block_level: 'row'"),
        ("zo-sgd", {"block_level": "layer", "block_mode": "x"}, ValueError, "block_mode: 'x'"),
        ("zo-sgd", {"hybrid_layers": 3}, ValueError, "Invalid hybrid_layers: 3 .*2 layers"),
        ("zo-sgd", {"hybrid_layers": 1.5}, ValueError, "Invalid hybrid_layers: 1.5"),
        ("zo-sgd", {"hybrid_layers": -1}, ValueError, "Invalid hybrid_layers: -1"),
        ("zo-sgd", {"sparsity": 1.0}, ValueError, r"Invalid sparsity: 1.0 \(must be in \[0, 1\)"),
        ("zo-sgd", {"sparsity": -0.1}, ValueError, "Invalid sparsity: -0.1"),
        ("zo-sgd", {"sparsity": 0.2, "sparsity_mode": "l1"}, ValueError, "sparsity_mode: 'l1'"),
        ("zo-sgd", {"sparsity": 0.2, "mask_every": 0}, ValueError, "Invalid mask_every: 0"),
        ("zo-sgd", {"block_level": "layer", "hybrid_layers": 1}, ValueError, "cannot be combined"),
        ("zo-sgd-cons", {"block_level": "layer"}, ValueError,
         "zo-sgd-cons: conservative and block-wise steps cannot be combined"),
        ("fo-sgd", {"sparsity": 0.2}, TypeError, "unexpected keyword argument 'sparsity'"),
    ],
)
def test_invalid_options_fail_with_a_one_line_error(name, options, error, match, tiny_model):
    model, _ = tiny_model("tiny-llama")
    with pytest.raises(error, match=match) as raised:
        create_optimizer(name, model, lr=1e-3, **options)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("option", [{"block_level": "layer"}, {"hybrid_layers": 1}])
def test_module_tree_options_need_the_model(option, tiny_model):
    model, _ = tiny_model("tiny-llama")
    with pytest.raises(TypeError, match=r"pass (it|the model itself) as params"):
        create_optimizer("zo-sgd", list(model.parameters()), lr=1e-3, **option)


def test_param_groups_from_partition_are_accepted(tiny_model):
    model, _ = tiny_model("tiny-llama")
    opt = create_optimizer("zo-sgd", partition(model, "sublayer"), lr=1e-3, block_level="layer")
    assert opt.forward_passes_per_step == 12


ENHANCEMENT_OPTIONS = ("block_level", "block_mode", "hybrid_layers", "sparsity",
                       "sparsity_mode", "mask_every")


# The paper's BP-free optimizers take every enhancement (ZO-Bench §5 applies each to each).
PAPER_ZEROTH_ORDER = ("zo-sgd", "zo-sgd-mmt", "zo-sgd-cons", "zo-sgd-sign", "zo-adam",
                      "forward-grad")


def test_the_papers_zeroth_order_optimizers_and_the_config_take_every_enhancement_option():
    import inspect

    assert set(ENHANCEMENT_OPTIONS) <= set(optimizer_option_types())
    for name in PAPER_ZEROTH_ORDER:
        assert set(ENHANCEMENT_OPTIONS) <= set(inspect.signature(OPTIMIZERS[name]).parameters)


@pytest.mark.parametrize("name", sorted(set(ZEROTH_ORDER) - set(PAPER_ZEROTH_ORDER)))
def test_a_later_method_takes_an_enhancement_or_refuses_it_by_name(name):
    """The frontier methods draw their own directions or make their own steps: where an
    enhancement does not apply, building the optimizer with it fails naming the option."""
    import inspect

    taken = set(inspect.signature(OPTIMIZERS[name]).parameters)
    for option in set(ENHANCEMENT_OPTIONS) - taken:
        with pytest.raises(TypeError, match=f"unexpected keyword argument {option!r}"):
            create_optimizer(name, torch.nn.Linear(3, 3), lr=1e-3, **{option: 1})


# End to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sst2_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "sst2").mkdir()
    for split, numbers in (("train", range(24)), ("dev", range(100, 112))):
        rows = [f"{'a delight' if i % 2 else 'a dull mess'} {i}\t{i % 2}" for i in numbers]
        (root / "sst2" / f"{split}.tsv").write_text("\n".join(["sentence\tlabel", *rows]) + "\n")
    (root / "sst2" / "test.tsv").write_text("index\tsentence\n0\tunlabelled\n")
    return root


@pytest.mark.parametrize(
    ("extra", "forwards"),
    [
        (["optimizer.sparsity=0.2"], 2),
        (["optimizer.sparsity=0.2", "optimizer.sparsity_mode=magnitude"], 2),
        (["optimizer.block_level=layer"], 8),
        (["--block-level=sublayer", "optimizer.block_mode=all"], 12),
        (["optimizer.hybrid_layers=1"], 3),
        (["--hybrid-layers=0.5"], 3),
    ],
)
def test_train_runs_end_to_end_with_each_enhancement(extra, forwards, sst2_dir, tmp_path, capsys):
    argv = [
        "train", "--model=random:tiny-llama", "--task=sst2", f"--data-dir={sst2_dir}",
        "--num-train=8", "--num-val=4", "--num-test=4", "--optimizer", "zo-sgd", "--lr=1e-3",
        "--steps=2", "--batch-size=2", "--eval-every=2", "--eval-batch-size=4", "--no-progress",
        f"--output-dir={tmp_path}", *extra,
    ]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["forward_passes_per_step"] == forwards


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["optimizer.sparsity=1.5"], "Invalid sparsity: 1.5"),
        (["optimizer.hybrid_layers=7"], "Invalid hybrid_layers: 7"),
        (["optimizer.block_level=tensor"], "Unknown block_level: 'tensor'"),
        (["--optimizer=fo-sgd", "optimizer.sparsity=0.2"], "optimizer.sparsity does not apply"),
    ],
)
def test_train_rejects_invalid_enhancement_options(extra, match, sst2_dir, capsys):
    argv = [
        "train", "--model=random:tiny-llama", "--task=sst2", f"--data-dir={sst2_dir}",
        "--num-train=8", "--num-val=4", "--num-test=4", "--steps=1", "--no-progress",
        "--optimizer=zo-sgd", *extra,
    ]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert match in err


def test_bench_suites_sweep_enhancement_options():
    from zotune.bench.suite import SuiteError, expand_suite

    suite = {
        "base": {"model": {"name": "random:tiny-llama"}},
        "grid": {"optimizer": ["zo-sgd", "fo-sgd"]},
        "sweep": {"zo-sgd": {"sparsity": [0.0, 0.2], "block_level": ["layer"]}},
    }
    runs = expand_suite(suite).runs
    options = [r.config["optimizer"] for r in runs if r.config["optimizer"]["name"] == "zo-sgd"]
    assert sorted(o["sparsity"] for o in options) == [0.0, 0.2]
    suite["sweep"] = {"default": {"sparsity": [0.2]}}
    with pytest.raises(SuiteError, match=r"optimizer\.sparsity does not apply to fo-sgd"):
        expand_suite(suite)


@pytest.mark.parametrize(
    "options",
    [
        {"sparsity": 0.3, "mask_every": 3},
        {"block_level": "sublayer", "block_mode": "all"},
        {"hybrid_layers": 1},
    ],
    ids=["sparse", "blocks", "hybrid"],
)
def test_resume_continues_the_same_trajectory(options, sst2_dir, tmp_path):
    from zotune.training.train import finetune

    def run(folder, steps, resume=False):
        finetune(
            {
                "model": {"name": "random:tiny-llama"},
                "task": {"name": "sst2", "data_dir": str(sst2_dir), "num_train": 8,
                         "num_val": 4, "num_test": 4},
                "optimizer": {"name": "zo-adam", "lr": 1e-3, **options},
                "train": {"steps": steps, "batch_size": 2, "eval_every": 2, "progress": False,
                          "output_dir": str(folder), "resume": resume},
            }
        )
        return torch.load(folder / "last.pt", weights_only=False)["trainable"]

    expected = run(tmp_path / "straight", 4)
    run(tmp_path / "split", 2)
    resumed = run(tmp_path / "split", 4, resume=True)
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_table_moves_add_exactly_the_drawn_direction(dtype):
    # The table path adds m ⊙ z with one addcmul per piece; the draw path (non-linear rules,
    # Forward-Grad) builds the same m ⊙ z in scratch. Chunks of 3000 over a table of 4096
    # make some chunks wrap around the table's end.
    sampler = MaskedDirectionSampler(
        DirectionSampler("table", chunk_numel=3000, table_numel=4096), {0: 0.3}, seed=3
    )
    param = torch.zeros(20_000, dtype=dtype)
    sampler.add_([IndexedParam(0, param)], 7, 0.5)
    expected = sampler.direction(torch.zeros(20_000, dtype=dtype), 7, 0) * 0.5
    assert torch.equal(param, expected)
    assert abs((param != 0).float().mean().item() - 0.7) < 0.02


@pytest.mark.parametrize("numel", [1, 5, 8, 13, 64, 1027])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_bit_packed_masks_unpack_to_the_values_packed(numel, dtype):
    """Sparse-MeZO holds its masks one bit per value; unpacking gives them back as 0/1 of the
    direction's dtype, into the front of a longer scratch buffer, whatever the tail."""
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) < 0.3
    scratch = torch.full((numel + 11,), 7.0, dtype=dtype)
    out = unpack_bits(pack_bits(mask), numel, scratch[:numel])
    assert out.dtype == dtype and torch.equal(out, mask.to(dtype))
    assert torch.equal(scratch[numel:], torch.full((11,), 7.0, dtype=dtype))

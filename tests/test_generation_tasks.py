"""SQuAD, DROP and ReCoRD (MeZO's templates, SQuAD carved by article, fixtures for the hub
tasks), their metrics, greedy decoding, and the metric as a ZO objective."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zotune.config import ConfigError, build_config
from zotune.estimators import IndexedParam, RandomGradientEstimator
from zotune.estimators.base import shift
from zotune.evaluation.evaluate import evaluate
from zotune.evaluation.generation import answer_text, greedy_answers
from zotune.evaluation.metrics import drop_scores, squad_em, squad_f1
from zotune.evaluation.scoring import Scorer
from zotune.tasks import Example, get_task, load_splits
from zotune.tasks.splits import carve_by_group
from zotune.training.objectives import closure_for
from zotune.training.run import check_config

MEZO_PROMPTS = json.loads((Path(__file__).parent / "data" / "mezo-prompts.json").read_text())


def quiet(_message: str) -> None:
    pass


@pytest.mark.parametrize(
    "case", MEZO_PROMPTS["cases"], ids=[f"{c['task']}-{i}" for i, c in
                                        enumerate(MEZO_PROMPTS["cases"])]
)
def test_prompts_are_mezo_templates_strings(case):
    """Rows through MeZO's own templates.py (tests/data/mezo-prompts.json says which commit):
    context + continuation is the verbalization, byte for byte."""
    (example,) = get_task(case["task"]).examples(case["row"])
    assert example.contexts == (case["prompt"],) * len(case["verbalizations"])
    joined = [c + t for c, t in zip(example.contexts, example.continuations, strict=True)]
    assert joined == case["verbalizations"]


# Metrics -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction,golds,f1,em",
    [
        ("Denver Broncos", ["Denver Broncos", "the Broncos"], 1.0, 1.0),
        ("The Denver Broncos!", ["Denver Broncos"], 1.0, 1.0),  # articles, punctuation, case
        ("Broncos", ["Denver Broncos"], 2 / 3, 0.0),  # P 1, R 1/2
        ("the big red dog", ["red cat", "a dog"], 0.5, 0.0),  # max over golds: P 1/3 R 1 → .5
        ("nothing", ["Denver Broncos"], 0.0, 0.0),
    ],
)
def test_squad_f1_and_em(prediction, golds, f1, em):
    assert squad_f1(prediction, golds) == pytest.approx(f1)
    assert squad_em(prediction, golds) == em


@pytest.mark.parametrize(
    "prediction,gold,em,f1",
    [
        ("3", "3.0", 1.0, 1.0),  # numbers compare as floats
        ("3 touchdowns", "3", 0.0, 0.67),  # bag F1 2·(1/2)·1/1.5, rounded to 2 places
        ("4 touchdowns", "3 touchdowns", 0.0, 0.0),  # the gold's number must be predicted
        ("three", "3", 0.0, 0.0),  # words are not numbers
        (["Jones", "Brown"], ["Brown", "Jones"], 1.0, 1.0),  # spans align one to one
        (["Jones"], ["Brown", "Jones"], 0.0, 0.5),  # an unmatched gold span scores 0
        ("well-known", "well known", 1.0, 1.0),  # hyphens split tokens
    ],
)
def test_drop_scores_as_its_official_script(prediction, gold, em, f1):
    assert drop_scores(prediction, gold) == (em, f1)


# Splits ------------------------------------------------------------------------------------


def test_carving_by_group_keeps_every_group_in_one_split():
    groups = [g for g in "aaabbbbccddddeeefff" for _ in range(1)]
    carving = carve_by_group(groups, num_train=5, num_val=3, num_test=4, seed=0)
    owner = {}
    for split in ("test", "val", "train"):
        for index in getattr(carving, split):
            assert owner.setdefault(groups[index], split) == split
    assert (len(carving.test), len(carving.val), len(carving.train)) == (4, 3, 5)


@pytest.fixture
def squad_data(data_dir):
    if not (data_dir / "squad" / "dev-v1.1.json").is_file():
        pytest.skip("no squad/dev-v1.1.json in the data folder")
    return data_dir


def test_squad_trains_from_the_dev_file_carved_by_article(squad_data):
    splits = load_splits("squad", data_dir=squad_data, num_train=300, num_val=100,
                         num_test=200, log=quiet)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (300, 100, 200)
    titles = [{ex.contexts[0].split("\n", 1)[0] for ex in getattr(splits, s)}
              for s in ("train", "val", "test")]
    assert not (titles[0] & titles[1] or titles[0] & titles[2] or titles[1] & titles[2])
    assert "no title is in two splits" in splits.notes[0]
    assert all(ex.generation and ex.continuations[0].endswith("\n") for ex in splits.test)


DROP_ROWS = [
    {"passage": f"Team {i} scored {i + 2} goals and lost {i} games.",
     "question": f"How many goals did team {i} score?",
     "answers_spans": {"spans": [str(i + 2)], "types": ["number"]}}
    for i in range(12)
]


@pytest.fixture
def drop_dir(tmp_path):
    """A hand-made DROP folder in the hub's row form (ucinlp/drop's fields)."""
    folder = tmp_path / "drop"
    folder.mkdir()
    for name, rows in (("validation.jsonl", DROP_ROWS[:6]), ("train.jsonl", DROP_ROWS[6:])):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_drop_loads_from_a_fixture_in_the_hubs_form(drop_dir):
    splits = load_splits("drop", data_dir=drop_dir, num_train=4, num_val=2, num_test=6, log=quiet)
    example = splits.test[0]
    assert example.contexts[0].startswith("Passage: Team") and example.contexts[0].endswith(
        "\nAnswer:")
    assert example.answers == (example.continuations[0].strip(),)
    assert get_task("drop").metric == "drop_f1"


RECORD_ROWS = [
    {"passage": "Paris -- Obama met Macron.\n@highlight\nTalks", "query": "@placeholder spoke.",
     "entities": ["Macron", "Obama", "Paris"], "answers": ["Obama"]},
    {"passage": "The U.S. Navy sailed.\n@highlight\nDrills", "query": "The @placeholder Navy.",
     "entities": ["U.S.", "United States"], "answers": ["U.S.", "United States"]},
]


def test_record_counts_every_spelling_of_the_answer_and_mixes_candidate_counts(tiny_model):
    spec = get_task("record")
    examples = [ex for row in RECORD_ROWS for ex in spec.examples(row)]
    assert [ex.num_candidates for ex in examples] == [3, 2]
    assert examples[1].is_correct(0) and examples[1].is_correct(1)
    model, loaded = tiny_model()
    scorer = Scorer(model, loaded.tokenizer, loss="lm")
    predictions = scorer.predict(examples, batch_size=8)
    assert scorer.accuracy(examples) == (predictions[0] == 1) * 0.5 + 0.5
    assert torch.isfinite(scorer.loss(scorer.encode_for_loss(examples)))


# Decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["full", "lora", "prefix", "prompt"])
def test_greedy_answers_batched_equal_one_at_a_time(tiny_model, scheme):
    model, loaded = tiny_model(scheme=scheme)
    prompts = ["Question: what?\nAnswer:", "Q\nA:", "a much longer prompt than the others"]
    batched = greedy_answers(model, loaded.tokenizer, prompts, max_new_tokens=6,
                             max_length=128, batch_size=3)
    alone = [greedy_answers(model, loaded.tokenizer, [p], max_new_tokens=6, max_length=128)[0]
             for p in prompts]
    assert batched == alone
    assert all(len(answer) <= 6 and "\n" not in answer for answer in batched)


@pytest.mark.parametrize("text,answer", [(" Denver\nQuestion: x", "Denver"), ("  a b ", "a b")])
def test_the_answer_ends_at_the_first_newline(text, answer):
    assert answer_text(text) == answer


def test_generation_scores_carry_f1_and_em(tiny_model):
    model, loaded = tiny_model()
    examples = [Example(("Q: x\nA:",), (" y\n",), 0, answers=("y",))] * 2
    score = evaluate(Scorer(model, loaded.tokenizer), examples, metric="squad_f1",
                     max_new_tokens=3, batch_size=2)
    assert score.name == "f1" and set(score.extra) == {"em"}
    assert 0.0 <= score.value <= 1.0


# The metric as the objective ---------------------------------------------------------------


def by_hand_accuracy(model, tokenizer, examples) -> float:
    """Mean log-probability of each candidate's bytes after its context, argmax, compared
    with the label: the accuracy written out without the scorer."""
    hits = 0
    for example in examples:
        scores = []
        for context, candidate in zip(example.contexts, example.continuations, strict=True):
            ids = tokenizer(context + candidate)["input_ids"]
            cut = len(tokenizer(context)["input_ids"])
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0]
            logprobs = torch.log_softmax(logits[cut - 1 : -1], -1)
            picked = logprobs.gather(1, torch.tensor(ids[cut:]).unsqueeze(1))
            scores.append(float(picked.mean()))
        hits += max(range(len(scores)), key=scores.__getitem__) == example.label
    return hits / len(examples)


@pytest.mark.parametrize("seed", range(4))
def test_zo_estimate_with_accuracy_objective_is_the_finite_difference_of_accuracy(
    tiny_model, seed
):
    """coeff = (f(θ+εz) − f(θ−εz)) / 2ε with f = −batch accuracy, each accuracy computed by
    hand at θ ± εz."""
    model, loaded = tiny_model()
    examples = [
        Example((f"review {i}: it was",) * 2, (" bad", " good"), i % 2) for i in range(6)
    ]
    scorer = Scorer(model, loaded.tokenizer)
    closure = closure_for("accuracy", scorer, examples, metric="accuracy", max_new_tokens=1,
                          batch_size=6)
    params = [IndexedParam(i, p) for i, p in enumerate(model.parameters())]
    eps = 0.5  # large enough that the argmax of some example flips
    estimator = RandomGradientEstimator(eps=eps, q=1, distribution="gaussian")
    estimate = estimator.estimate(params, closure, seed)
    shift(params, estimator.sampler, [(estimate.seeds[0], -estimate.offset)])  # back to θ
    accuracies = []
    for sign in (1, -1):
        shift(params, estimator.sampler, [(estimate.seeds[0], sign * eps)])
        accuracies.append(by_hand_accuracy(model, loaded.tokenizer, examples))
        shift(params, estimator.sampler, [(estimate.seeds[0], -sign * eps)])
    expected = (-accuracies[0] + accuracies[1]) / (2 * eps)
    assert estimate.coeffs[0] == pytest.approx(expected, abs=1e-6)
    assert abs(estimate.coeffs[0] * 2 * eps * len(examples) - round(
        estimate.coeffs[0] * 2 * eps * len(examples))) < 1e-6  # a whole number of flips


@pytest.mark.parametrize(
    "task,optimizer,objective,problem",
    [
        ("sst2", "fo-sgd", "accuracy", "fo-sgd needs one"),
        ("sst2", "forward-grad", "accuracy", "forward-grad needs one"),
        ("sst2", "zo-sgd", "f1", "its metric is accuracy"),
        ("squad", "zo-sgd", "accuracy", "its metric is squad_f1"),
        ("sst2", "zo-sgd", "bleu", "unknown objective 'bleu'"),
    ],
)
def test_objectives_without_a_meaning_are_refused_by_name(task, optimizer, objective, problem):
    config = build_config({"task": {"name": task}, "optimizer": {"name": optimizer},
                           "train": {"objective": objective}})
    with pytest.raises(ConfigError, match=problem):
        check_config(config)


def test_a_squad_run_trains_on_f1_and_reports_f1(tmp_path, squad_data):
    """SQuAD end to end offline, --objective f1: the results carry F1 and EM."""
    from zotune.training.train import finetune

    result = finetune(
        {"model": {"name": "random:tiny-llama"},
         "task": {"name": "squad", "data_dir": str(squad_data), "num_train": 4,
                  "num_val": 2, "num_test": 2, "max_new_tokens": 3},
         "optimizer": {"name": "zo-sgd", "lr": 1e-3},
         "train": {"steps": 1, "batch_size": 2, "eval_every": 1, "progress": False,
                   "objective": "f1", "output_dir": str(tmp_path / "run")}}
    )
    assert result.metric == "f1" and result.test_em is not None
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert {"val_f1", "val_em"} <= set(records[0])
    assert "test F1" in result.summary()

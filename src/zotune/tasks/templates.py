r"""The prompt templates of the built-in tasks: row → the contexts and continuations of its
candidates.

Template versions (``version=``). ``"reference"`` (the default) writes every prompt as ZO-Bench's
``zo-bench/templates.py`` (ZO-Bench/ZO-LLM, commit bf210fa) does, with the template its
``run.py`` picks (``--template_ver 0``); MeZO's ``large_models/templates.py`` (princeton-nlp/MeZO,
commit 552cb1b) holds the same strings for the tasks both have, except BoolQ (below). The
reference builds ``encode(row)`` (the prompt) and ``verbalize(row, c)`` (prompt + answer c) and
strips spaces, not newlines, from both ends (``zo-bench/utils.py::encode_prompt``); the context
here is the stripped prompt and the continuation the rest of the stripped verbalization, so
context + continuation is byte for byte the text the reference tokenizes. Fields are used as
the reference uses them (stripped only where it strips). ``"zotune-0.1"`` keeps zotune 0.1's
prompts, to reproduce results made with it.

``zotune tasks --markdown`` prints every task's context and candidates, rendered from the
declarations in :mod:`zotune.tasks.builtin` (COPA's connective is "so" for an effect
question, "because" for a cause).

COPA's choice is written with its whole first word lower-cased unless that word is exactly
"I" (``CopaTemplate.capitalize``, capitalization "correct": ``"I'm"`` becomes ``"i'm"``).
WinoGrande's continuation is the option and the rest of the sentence (the reference's
candidates are ``option + text after _``). BoolQ: ZO-Bench's ``run.py`` passes
``template_ver=0``, i.e. ``BoolQTemplate`` (answer after a space); MeZO's ``run.py`` calls
``get_template()`` whose BoolQ default is ``BoolQTemplateV3`` (answer after ``\n``).

``"zotune-0.1"`` differs from the reference for COPA (only the first letter of the choice
lower-cased, ``I'…`` kept), WinoGrande (partial scoring: each option in its own context,
both scoring the text after the blank) and MultiRC, RTE, CB, WSC, WiC (the prompt ends at the
question mark and the answer follows a space).

No task alignment (``template=False``, the paper's alignment ablation): the prompt words are
dropped and the candidates stay the same label words. SST-2, COPA and RTE use ZO-Bench's
``SST2TemplateEmpty``, ``CopaTemplateEmpty`` and ``RTETemplateEmpty``; the other tasks have
no reference and join their raw fields by newlines, the answer on its own line where the
aligned answer is. WinoGrande has no prompt words to drop; without alignment the option is no
longer placed in the sentence: the context is the raw sentence, blank included, and the
candidates are the two options as words.

The raw contexts are in the second table of ``zotune tasks --markdown``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import TaskDataError
from .formats import Row
from .spec import Template


def answered(prompt: str, answers: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The reference's (prompt, prompt + answer) pair as (contexts, continuations).

    ``zo-bench/utils.py::encode_prompt`` strips spaces (not newlines) from both ends of the
    prompt and of each verbalization; the continuation is what the stripped verbalization
    adds to the stripped prompt.
    """
    context = prompt.strip(" ")
    continuations = []
    for answer in answers:
        full = (prompt + answer).strip(" ")
        # Leading spaces strip alike from both unless the prompt is only spaces.
        continuations.append(full[len(context) :] if context else full)
    return (context,) * len(answers), tuple(continuations)


def _text(row: Row, name: str) -> str:
    return row[name].strip()


# The verbalizers of zo-bench/templates.py, in label order.
_SST2_WORDS = ("terrible", "great")  # SST2Template.verbalizer
NO_YES = ("No", "Yes")  # MultiRCTemplate, WICTemplate, WSCTemplate .verbalizer
YES_NO = ("Yes", "No")  # RTETemplate.verbalizer
YES_NO_MAYBE = ("Yes", "No", "Maybe")  # CBTemplate.verbalizer


# Reference templates (zo-bench/templates.py; the class is named beside each) --------------


def sst2(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # SST2Template: f"{text} It was" + f" {verbalizer[c]}"
    return answered(f"{row['sentence'].strip()} It was", [f" {w}" for w in _SST2_WORDS])


def sst2_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # SST2TemplateEmpty: f"{text} " + verbalizer[c]
    return answered(f"{row['sentence'].strip()} ", _SST2_WORDS)


def _copa_premise(row: Row) -> str:
    # CopaTemplate.get_prompt: premise.rstrip() without one final "."
    premise = row["premise"].rstrip()
    return premise[:-1] if premise.endswith(".") else premise


def _copa_capitalize(choice: str) -> str:
    # CopaTemplate.capitalize, capitalization "correct": the whole first word lower-cased
    # unless it is exactly "I".
    words = choice.split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


def copa(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # CopaTemplate: effect_conj " so ", cause_conj " because "
    conjunction = " so " if row["question"] == "effect" else " because "
    choices = [_copa_capitalize(row[key]) for key in ("choice1", "choice2")]
    return answered(_copa_premise(row) + conjunction, choices)


def copa_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # CopaTemplateEmpty: both conjunctions " "
    choices = [_copa_capitalize(row[key]) for key in ("choice1", "choice2")]
    return answered(_copa_premise(row) + " ", choices)


def winogrande(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # WinoGrandeTemplate: the text before "_"; WinoGrandeDataset.build_sample's candidates
    # are option + the text after "_".
    before, after = row["sentence"].split("_")
    return answered(before, [row["option1"] + after, row["option2"] + after])


def multirc(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # MultiRCTemplate
    prompt = (
        f"{row['paragraph']}\nQuestion: {row['question']}\n"
        f'I found this answer "{row["answer"]}". Is that correct? Yes or No?\n'
    )
    return answered(prompt, NO_YES)


def rte(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # RTETemplate
    prompt = f'{row["premise"]}\nDoes this mean that "{row["hypothesis"]}" is true? Yes or No?\n'
    return answered(prompt, YES_NO)


def rte_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # RTETemplateEmpty
    return answered(f'{row["premise"]}\n"{row["hypothesis"]}"\n', YES_NO)


def cb(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # CBTemplate
    prompt = (
        f'Suppose {row["premise"]} Can we infer that "{row["hypothesis"]}"? '
        "Yes, No, or Maybe?\n"
    )
    return answered(prompt, YES_NO_MAYBE)


def boolq(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # BoolQTemplate (zo-bench/run.py passes template_ver=0)
    question = row["question"]
    if not question.endswith("?"):
        question = question + "?"
    question = question[0].upper() + question[1:]
    return answered(f"{row['passage']} {question}", [f" {w}" for w in NO_YES])


def wsc(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # WSCTemplate
    prompt = (
        f"{row['text']}\nIn the previous sentence, does the pronoun "
        f'"{row["span2_text"].lower()}" refer to {row["span1_text"]}? Yes or No?\n'
    )
    return answered(prompt, NO_YES)


def wic(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # WICTemplate
    prompt = (
        f'Does the word "{row["word"]}" have the same meaning in these two sentences? '
        f"Yes, No?\n{row['sentence1']}\n{row['sentence2']}\n"
    )
    return answered(prompt, NO_YES)


def fields_on_lines(*names: str, answers: Sequence[str]) -> Template:
    """No alignment without a reference: the raw fields one per line (empty ones left out),
    then the answers on the next line."""

    def raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
        prompt = "\n".join(text for name in names if (text := _text(row, name)))
        return answered(prompt + "\n", answers)

    return raw


def winogrande_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return answered(row["sentence"].strip(), [f" {_text(row, k)}" for k in ("option1", "option2")])


def boolq_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    prompt = "\n".join(text for name in ("passage", "question") if (text := _text(row, name)))
    return answered(prompt, [f" {w}" for w in NO_YES])


# Surface-form calibration prompts: MeZO's encode_sfc / verbalize_sfc
# (large_models/templates.py, the class named beside each): the prompt without the input. -----


def words_only(words: Sequence[str]) -> Template:
    # MultiRC, RTE, CB, WiC, WSC: encode_sfc "" and verbalize_sfc the verbalizer word; BoolQ:
    # "" and the candidate.
    return lambda row: answered("", words)


def sst2_sfc(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # SST2Template: encode_sfc " It was", verbalize_sfc " It was {verbalizer[c]}"
    return answered(" It was", [f" {w}" for w in _SST2_WORDS])


def copa_sfc(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # CopaTemplate: encode_sfc conjunction.strip(), verbalize_sfc + " " + capitalize(choice)
    conjunction = "so" if row["question"] == "effect" else "because"
    choices = [" " + _copa_capitalize(row[key]) for key in ("choice1", "choice2")]
    return answered(conjunction, choices)


def record_sfc(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # ReCoRDTemplateGPT3: encode_sfc "-", verbalize_sfc "- {query, @placeholder → entity}"
    fulls = [f"- {row['query'].replace('@placeholder', e)}" for e in row["entities"]]
    return verbalized("-", fulls)


# Generation and ReCoRD (MeZO's large_models/templates.py; ZO-Bench has none of them) ------


def squad(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # SQuADv2Template (MeZO's SQuAD template): encode ends "Answer:", verbalize adds
    # " {answers[0]}\n" (the first gold answer, with the newline the decoding stops at).
    prompt = (
        f"Title: {row['title']}\nContext: {row['context']}\n"
        f"Question: {row['question'].strip()}\nAnswer:"
    )
    return answered(prompt, [f" {row['answers'][0]}\n"])


def squad_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = ("title", "context", "question")
    prompt = "\n".join(text for name in names if (text := _text(row, name)))
    return answered(prompt + "\n", [f"{row['answers'][0]}\n"])


def drop(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # DROPTemplate: "Passage: {context}\nQuestion: {question}\nAnswer:" + " {answers[0]}\n"
    prompt = f"Passage: {row['passage']}\nQuestion: {row['question'].strip()}\nAnswer:"
    return answered(prompt, [f" {row['answers'][0]}\n"])


def drop_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    prompt = "\n".join(text for name in ("passage", "question") if (text := _text(row, name)))
    return answered(prompt + "\n", [f"{row['answers'][0]}\n"])


def verbalized(
    prompt: str, verbalizations: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(contexts, continuations) from an encode / verbalize pair whose verbalization is not
    the prompt + the answer: each stripped of spaces at both ends, the continuation being
    what the verbalization adds after the prompt (MeZO's ``option_len``)."""
    context = prompt.strip(" ")
    continuations = []
    for full in verbalizations:
        full = full.strip(" ")
        if not full.startswith(context):
            raise TaskDataError(f"verbalization {full[:40]!r} does not extend its prompt")
        continuations.append(full[len(context) :])
    return (context,) * len(verbalizations), tuple(continuations)


def record(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # ReCoRDTemplateGPT3 (what MeZO's ReCoRDDataset.get_template returns): "@highlight\n"
    # becomes "- "; encode "{passage}\n-", verbalize "{passage}\n- {query, @placeholder →
    # the entity}".
    passage = row["passage"].replace("@highlight\n", "- ")
    fulls = [f"{passage}\n- {row['query'].replace('@placeholder', e)}" for e in row["entities"]]
    return verbalized(f"{passage}\n-", fulls)


def record_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    passage = row["passage"].replace("@highlight\n", "")
    fulls = [f"{passage}\n{row['query'].replace('@placeholder', e)}" for e in row["entities"]]
    return verbalized(f"{passage}\n", fulls)


# zotune 0.1's aligned templates, where they differ from the reference ---------------------


def _same_context(context: str, answers: Sequence[str]):
    return (context,) * len(answers), tuple(answers)


def copa_v01(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    def lower_first_letter(text: str) -> str:
        first_word = text.split(" ", 1)[0]
        if first_word == "I" or first_word.startswith("I'"):
            return text
        return text[:1].lower() + text[1:]

    premise = _text(row, "premise")
    premise = premise[:-1] if premise.endswith(".") else premise
    connective = "so" if row["question"] == "effect" else "because"
    answers = [" " + lower_first_letter(_text(row, key)) for key in ("choice1", "choice2")]
    return _same_context(f"{premise} {connective}", answers)


def winogrande_partial(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    before, after = row["sentence"].split("_")
    options = (_text(row, "option1"), _text(row, "option2"))
    return tuple(f"{before.lstrip()}{option}" for option in options), (after.rstrip(),) * 2


def question_v01(build: Callable[[Row], str], answers: Sequence[str]) -> Template:
    """A 0.1 Yes/No prompt: the reference prompt without its final newline, answers after a
    space, fields stripped."""

    def template(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
        stripped = {key: value.strip() if isinstance(value, str) else value
                    for key, value in row.items()}
        return _same_context(build(stripped).rstrip("\n"), [f" {a}" for a in answers])

    return template


def prompt_of(template: Template) -> Callable[[Row], str]:
    return lambda row: template(row)[0][0]

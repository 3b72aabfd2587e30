"""The reference-answer matcher against a table of hand-judged responses."""
from __future__ import annotations

import itertools

import pytest

from lldyn.errors import LldynError
from lldyn.reference_answer import (
    CONTRADICTED,
    EMPTY,
    NEGATED,
    NOT_MENTIONED,
    RESTATED,
    STATED,
    Match,
    Reference,
    ReferenceJudge,
    normalise,
    reference_verdict,
    states_answer,
)

# --------------------------------------------------------------------------- normalise

NORMALISE_CASES = [
    # (text, normalised)
    ("Paris", "paris"),
    ("  The   capital\tis\nPARIS!  ", "the capital is paris"),
    ("Bogotá", "bogota"),
    ("Straße", "strasse"),
    ("(Paris).", "paris"),
    ("\"Paris\"", "paris"),
    ("Paris's museums", "paris s museums"),
    ("Côte d'Ivoire", "cote d ivoire"),
    ("isn't", "is not"),
    ("isn’t", "is not"),
    ("can't, won't, cannot", "can not will not can not"),
    ("1,000", "1000"),
    ("1,000,000.50", "1000000.5"),
    ("2.50", "2.5"),
    ("72.0", "72"),
    ("007", "7"),
    ("The answer is 72.", "the answer is 72"),
    ("1,2", "1 2"),
    ("-5", "-5"),
    ("3 - 8 = -5", "3 8 -5"),
    ("3-5", "3 5"),
    ("100km", "100 km"),
    ("72nd", "72nd"),
    ("CO2", "co2"),
    ("７２", "72"),
    ("seventy-two", "72"),
    ("Seventy Two", "72"),
    ("twelve", "12"),
    ("one hundred and five", "105"),
    ("a thousand", "1000"),
    ("two thousand and twenty-four", "2024"),
    ("one million two hundred thousand", "1200000"),
    ("nineteen hundred", "1900"),
    ("two point five", "2.5"),
    ("minus five", "-5"),
    ("3 thousand", "3000"),
    ("1.5 million", "1500000"),
    ("one two three", "1 2 3"),
    ("one, two", "1 2"),
    ("between one hundred and two hundred", "between 100 and 200"),
    ("one hundred and two thousand", "102000"),
    ("ninety-nine thousand nine hundred and ninety-nine", "99999"),
    ("first", "first"),
    ("", ""),
    ("?!", ""),
]


@pytest.mark.parametrize("text, expected", NORMALISE_CASES)
def test_normalise(text, expected):
    assert normalise(text) == expected


def test_normalise_is_idempotent():
    for text, _ in NORMALISE_CASES:
        assert normalise(normalise(text)) == normalise(text)


# --------------------------------------------------------------------------- states_answer: the table

CASES = [
    # (response, answer, aliases, matched, reason)
    # exact, case, punctuation around the answer
    ("The capital of France is Paris.", "Paris", (), True, STATED),
    ("paris", "Paris", (), True, STATED),
    ("PARIS!", "Paris", (), True, STATED),
    ("(Paris)", "Paris", (), True, STATED),
    ("Paris.", "Paris", (), True, STATED),
    ('"Paris"', "Paris", (), True, STATED),
    ("Paris's museums are famous.", "Paris", (), True, STATED),
    ("The capital is Lyon.", "Paris", (), False, NOT_MENTIONED),
    # accents
    ("The capital of Colombia is Bogota.", "Bogotá", (), True, STATED),
    ("The capital of Colombia is Bogotá.", "Bogota", (), True, STATED),
    ('In Spanish, "cat" is "GATO".', "gato", (), True, STATED),
    # aliases and multi-word answers
    ("The capital of India is New Delhi.", "New Delhi", (), True, STATED),
    ("The capital of India is Delhi.", "New Delhi", ("Delhi",), True, STATED),
    ("Delhi is new.", "New Delhi", (), False, NOT_MENTIONED),
    ("Plants take in carbon dioxide.", "carbon dioxide", ("CO2",), True, STATED),
    ("Plants take in carbon-dioxide.", "carbon dioxide", (), True, STATED),
    ("Plants take in CO2.", "carbon dioxide", ("CO2",), True, STATED),
    ("Paris, France.", "Paris, France", (), True, STATED),
    ("It is not Paris, France.", "Paris, France", (), False, NEGATED),
    ("Plants take in carbon monoxide.", "carbon dioxide", ("CO2",), False, NOT_MENTIONED),
    ("The Hague is the seat of government.", "The Hague", (), True, STATED),
    ("It meets in the Hague.", "Hague", (), True, STATED),
    ("Oranges are rich in vitamin C.", "vitamin A", (), False, NOT_MENTIONED),
    ("Carrots are rich in Vitamin A.", "vitamin A", (), True, STATED),
    # numbers: digits, words, decimals, thousands
    ("8 times 9 is 72.", "72", (), True, STATED),
    ("It is seventy-two.", "72", (), True, STATED),
    ("It is seventy two.", "72", (), True, STATED),
    ("Seventy-Two", "72", (), True, STATED),
    ("The answer is 72", "seventy-two", (), True, STATED),
    ("It is 72.0.", "72", (), True, STATED),
    ("It weighs 72kg.", "72", (), True, STATED),
    ("Half of 5 is 2.5.", "2.5", (), True, STATED),
    ("It is two point five.", "2.5", (), True, STATED),
    ("There are 1,000 metres in a kilometre.", "1000", (), True, STATED),
    ("There are 1000 metres in a kilometre.", "1,000", (), True, STATED),
    ("There are one thousand metres.", "1000", (), True, STATED),
    ("There are a thousand metres.", "1,000", (), True, STATED),
    ("3 - 8 = -5", "-5", (), True, STATED),
    ("It is minus five.", "-5", (), True, STATED),
    # near misses
    ("It is 172.", "72", (), False, NOT_MENTIONED),
    ("It is 7.2.", "72", (), False, NOT_MENTIONED),
    ("It is 720.", "72", (), False, NOT_MENTIONED),
    ("The 72nd floor.", "72", (), False, NOT_MENTIONED),
    ("It is 25.", "2.5", (), False, NOT_MENTIONED),
    ("There are 10,000 metres.", "1000", (), False, NOT_MENTIONED),
    ("There are 100 metres.", "1,000", (), False, NOT_MENTIONED),
    ("8 - 3 = 5", "-5", (), False, NOT_MENTIONED),
    ("The weather is hot.", "hot", (), True, STATED),
    ("He took a shot.", "hot", (), False, NOT_MENTIONED),
    ("Parisian cafés are lovely.", "Paris", (), False, NOT_MENTIONED),
    ("Parisians love Paris.", "Paris", (), True, STATED),
    # negations before the mention
    ("It is not Paris.", "Paris", (), False, NEGATED),
    ("It isn't Paris.", "Paris", (), False, NEGATED),
    ("It isn’t Paris.", "Paris", (), False, NEGATED),
    ("It is not the Paris you know.", "Paris", (), False, NEGATED),
    ("The capital is never Paris.", "Paris", (), False, NEGATED),
    ("It can't be Paris.", "Paris", (), False, NEGATED),
    ("It cannot be Paris.", "Paris", (), False, NEGATED),
    ("Choose Lyon rather than Paris.", "Paris", (), False, NEGATED),
    ("Choose Lyon instead of Paris.", "Paris", (), False, NEGATED),
    ("It is anything but Paris.", "Paris", (), False, NEGATED),
    ("Neither Paris nor Lyon.", "Paris", (), False, NEGATED),
    ("Neither Paris nor Lyon.", "Lyon", (), False, NEGATED),
    ('The opposite of "hot" is not "cold".', "cold", (), False, NEGATED),
    ("It is not 72, it is 73.", "72", (), False, NEGATED),
    ("It is not Paris but Lyon.", "Paris", (), False, NEGATED),
    ("It is not seventy-two.", "72", (), False, NEGATED),
    # negations that end their scope before the mention
    ("It is not Paris but Lyon.", "Lyon", (), True, STATED),
    ("It is not Lyon, it is Paris.", "Paris", (), True, STATED),
    ("It's not Lyon it's Paris", "Paris", (), True, STATED),
    ("Not Lyon but Paris.", "Paris", (), True, STATED),
    ("I'm not sure, but I think it is Paris.", "Paris", (), True, STATED),
    ("It is 73, not 72.", "73", (), True, STATED),
    # negations after the mention
    ("Paris, not Lyon.", "Paris", (), True, STATED),
    ("Paris, not Lyon.", "Lyon", (), False, NEGATED),
    ("It is 73, not 72.", "72", (), False, NEGATED),
    ("Paris? No, it is Lyon.", "Paris", (), False, NEGATED),
    ("Is it Paris? Nope.", "Paris", (), False, NEGATED),
    ("The answer is Paris. Wrong.", "Paris", (), False, NEGATED),
    ("Paris is not the capital of France.", "Paris", (), False, NEGATED),
    ("Paris isn't the capital.", "Paris", (), False, NEGATED),
    ("Paris is wrong.", "Paris", (), False, NEGATED),
    ("Paris, no doubt.", "Paris", (), True, STATED),
    # cues that do not negate
    ("Not only is Paris the capital, it is also the largest city.", "Paris", (), True, STATED),
    ("It is no doubt Paris.", "Paris", (), True, STATED),
    ("It is none other than Paris.", "Paris", (), True, STATED),
    ("No, the Sun is a star.", "no", (), True, STATED),
    ("No no no.", "no", (), True, STATED),
    # several mentions
    ("Paris. Paris. Paris.", "Paris", (), True, STATED),
    ("Paris, Paris, Paris, not Lyon, Paris.", "Paris", (), True, STATED),
    ("It is Paris. Paris? No, it is Lyon.", "Paris", (), False, CONTRADICTED),
    ("It is Paris, not Paris.", "Paris", (), False, CONTRADICTED),
    ("Paris is the capital, and Paris is not small.", "Paris", (), False, CONTRADICTED),
    # empty responses
    ("", "Paris", (), False, EMPTY),
    ("   ", "Paris", (), False, EMPTY),
    ("...!?", "Paris", (), False, EMPTY),
]


@pytest.mark.parametrize("response, answer, aliases, matched, reason", CASES)
def test_states_answer_table(response, answer, aliases, matched, reason):
    result = states_answer(response, answer, aliases)
    assert (result.matched, result.reason) == (matched, reason)
    assert result.matched == (result.reason == STATED)


def test_the_table_is_large_enough():
    assert len(CASES) >= 40


def test_match_names_the_alias_and_where():
    response = "The capital of India is Delhi."
    result = states_answer(response, "New Delhi", ["Delhi"])
    assert result == Match(matched=True, reason=STATED, alias="Delhi", start=24, end=29, mentions=result.mentions)
    assert response[result.start:result.end] == "Delhi"
    # the longer mention wins over the alias inside it
    result = states_answer("It is New Delhi.", "New Delhi", ["Delhi"])
    assert (result.alias, len(result.mentions)) == ("New Delhi", 1)


def test_match_span_of_a_number_in_words():
    response = "It is seventy-two degrees."
    result = states_answer(response, "72")
    assert response[result.start:result.end] == "seventy-two"
    assert result.mentions[0].form == "72"


def test_mentions_say_why_they_are_negated():
    result = states_answer("It is Paris. Paris? No, it is Lyon. Not Paris. Paris is wrong.", "Paris")
    assert [m.negation for m in result.mentions] == [None, "'no' next", "'not' before", "'is wrong' after"]
    assert (result.reason, result.alias, result.start) == (CONTRADICTED, "Paris", 6)


def test_negation_window_is_three_words_without_articles():
    assert states_answer("not a big old Paris", "Paris").reason == NEGATED          # not big old Paris: 3rd
    assert states_answer("not a very big old Paris", "Paris").reason == STATED      # 4th word back


def test_unmatched_result_has_no_location():
    result = states_answer("Lyon.", "Paris")
    assert (result.alias, result.start, result.end, result.mentions) == (None, None, None, ())


def test_answers_that_normalise_to_nothing_are_refused():
    with pytest.raises(LldynError, match="no words"):
        states_answer("Paris", "...")
    with pytest.raises(LldynError, match="answer_aliases"):
        states_answer("Paris", "Paris", ["?"])
    with pytest.raises(LldynError):
        states_answer("Paris", 72)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- verdicts

VERDICTS = [
    # (a, b, answer, aliases, verdict)
    ("The capital of France is Paris.", "The capital of France is Marseille.", "Paris", (), 0),
    ("It is Marseille.", "Paris.", "Paris", (), 1),
    ("Paris.", "It is Paris.", "Paris", (), None),
    ("Lyon.", "Marseille.", "Paris", (), None),
    ("It is not Paris.", "Lyon.", "Paris", (), None),
    ("seventy-two", "72", "72", (), None),
    ("seventy-two", "172", "72", (), 0),
    ("", "There are 1,000 metres in a kilometre.", "1000", ("one thousand",), 1),
]


@pytest.mark.parametrize("a, b, answer, aliases, verdict", VERDICTS)
def test_reference_verdict(a, b, answer, aliases, verdict):
    assert reference_verdict(a, b, answer, aliases) == verdict


def test_verdict_is_symmetric_in_both_orders():
    responses = ["Paris.", "It is not Paris.", "Lyon.", "", "It is Paris. Paris? No.", "PARIS"]
    flip = {0: 1, 1: 0, None: None}
    for a, b in itertools.product(responses, repeat=2):
        assert reference_verdict(b, a, "Paris") == flip[reference_verdict(a, b, "Paris")]
    for a in responses:
        assert reference_verdict(a, a, "Paris") is None


# --------------------------------------------------------------------------- gold answers of a data set


def test_reference_from_row():
    ref = Reference.from_row({"prompt": "8 times 9?", "answer": "72", "answer_aliases": ["seventy-two"]})
    assert ref == Reference("72", ("seventy-two",))
    assert ref.states("It is 72.").matched
    assert ref.verdict("72", "27") == 0
    assert Reference.from_row({"prompt": "Hello"}) is None


def test_reference_from_row_names_file_line_and_field():
    with pytest.raises(LldynError) as err:
        Reference.from_row({"answer": "!!"}, file="data.jsonl", line=3)
    assert (err.value.file, err.value.line, err.value.field) == ("data.jsonl", 3, "answer")
    with pytest.raises(LldynError) as err:
        Reference.from_row({"answer": "72", "answer_aliases": "seventy-two"}, file="data.jsonl", line=4)
    assert err.value.field == "answer_aliases"
    with pytest.raises(LldynError) as err:
        Reference.from_row({"answer_aliases": ["72"]}, file="data.jsonl", line=5)
    assert err.value.field == "answer_aliases"


def test_reference_judge_has_the_shape_of_a_preference():
    judge = ReferenceJudge({"What is the capital of France?": Reference("Paris")})
    prompt = "What is the capital of France?"
    assert judge.prefer(prompt, "Paris.", "Lyon.") == 0
    assert judge(prompt, "Lyon.", "Paris.") == 1
    assert judge(prompt, "Lyon.", "Nice.") is None
    a, b = judge.explain(prompt, "Paris.", "Not Paris.")
    assert (a.reason, b.reason) == (STATED, NEGATED)
    with pytest.raises(LldynError, match="no gold answer"):
        judge.prefer("Some other prompt", "a", "b")


def test_reference_judge_with_a_lookup_function_for_chat_prompts():
    chat = [{"role": "user", "content": "Write eight times nine in words."}]
    judge = ReferenceJudge(lambda prompt: Reference("seventy-two") if prompt is chat else None)
    assert judge(chat, "Seventy two.", "Seventy.") == 0
    # "Say 72 in words." holds the answer itself, so a bare "Seventy two." only restates it (a false
    # negative of the count, documented in the module docstring)
    said = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say 72 in words."}]
    judge = ReferenceJudge(lambda prompt: Reference("seventy-two") if prompt is said else None)
    assert judge(said, "Seventy two.", "Seventy.") is None
    assert judge.states(said, "Seventy two.").reason == RESTATED
    assert judge(said, "72 is seventy-two.", "Seventy.") == 0


# --------------------------------------------------------------------------- mentions the prompt already makes

PROMPT_CASES = [
    # (prompt, response, answer, aliases, reason, restated): builtin-0102 and its answers
    ("Divide 64 by 8.", "Dividing 64 by 8 gives 8.", "8", ["eight"], STATED, 1),
    ("Divide 64 by 8.", "Dividing 64 by 8 gives 9.", "8", ["eight"], RESTATED, 1),
    ("Divide 64 by 8.", "Sixty-four divided by eight is eight.", "8", ["eight"], STATED, 1),
    ("Divide 64 by 8.", "8.", "8", ["eight"], RESTATED, 1),  # the count's false negative
    ("Divide 64 by 8.", "Dividing 64 by 8 does not give 8.", "8", ["eight"], NEGATED, 1),
    ("Divide 64 by 8.", "Dividing 64 by 8 gives 8, not 8.", "8", ["eight"], CONTRADICTED, 1),
    ("Divide 64 by 8.", "It is 9.", "8", ["eight"], NOT_MENTIONED, 0),
    ("Divide 64 by 8.", "", "8", ["eight"], EMPTY, 0),
    # the prompt's negated mention counts too: "not 8" in the prompt accounts for one mention
    ("Is it 8 or not 8? 16 divided by 2.", "Not 8? It is 8, yes 8.", "8", [], STATED, 2),
    ("Is it 8 or not 8? 16 divided by 2.", "It is 8, not 8.", "8", [], RESTATED, 2),
    # a prompt without the answer changes nothing
    ("What is 8 times 9?", "8 times 9 is 72.", "72", [], STATED, 0),
]


@pytest.mark.parametrize("prompt,response,answer,aliases,reason,restated", PROMPT_CASES)
def test_mentions_the_prompt_already_makes_do_not_count(prompt, response, answer, aliases, reason, restated):
    result = states_answer(response, answer, aliases, prompt=prompt)
    assert (result.reason, result.restated, result.matched) == (reason, restated, reason == STATED), result
    # without the prompt the first mentions count again
    plain = states_answer(response, answer, aliases)
    assert plain.mentions == result.mentions
    if restated == 0:
        assert plain == result


def test_the_prompt_keeps_the_verdict_symmetric():
    ref = Reference("8", ("eight",))
    prompt = "Divide 64 by 8."
    a, b = "Dividing 64 by 8 gives 8.", "Dividing 64 by 8 gives 9."
    assert ref.verdict(a, b, prompt) == 0 and ref.verdict(b, a, prompt) == 1
    assert ref.verdict(a, b) is None  # without the prompt both mention 8: a tie


def test_mentions_inside_longer_mentions_are_dropped_but_others_kept():
    result = states_answer("New Delhi or Delhi, New Delhi", "New Delhi", ["Delhi", "new delhi"])
    assert [(m.alias, m.start, m.end) for m in result.mentions] == [
        ("New Delhi", 0, 9), ("Delhi", 13, 18), ("New Delhi", 20, 29)]

"""The question's syntax: -word and -"phrase" exclude; other dashes are text, never NOT."""

import pytest

from ragapp.retrieval.query_syntax import SearchQuery, search_query_parse, without_negation


def test_a_question_without_exclusions_is_embedded_and_matched_as_written():
    question = 'How are "taxi rides" reimbursed in x-ray T-ALL wards?'
    assert search_query_parse(question) == SearchQuery(embedded_text=question, scored_text=question, matched_text=question,
                                                       excluded=())


def test_a_dash_at_the_start_of_a_word_excludes_it_from_both_texts():
    parsed = search_query_parse("taxi -receipt rides -β-catenin")
    assert parsed.embedded_text == "taxi rides"
    assert parsed.scored_text == parsed.matched_text == "taxi  rides "
    assert parsed.excluded == ("receipt", "β-catenin")


def test_a_dash_before_a_closed_phrase_excludes_the_phrase_with_its_quotes():
    parsed = search_query_parse('-"lost luggage" taxi "night fare"')
    assert parsed.embedded_text == 'taxi "night fare"'
    assert parsed.scored_text == parsed.matched_text == ' taxi "night fare"'
    assert parsed.excluded == ('"lost luggage"',)


@pytest.mark.parametrize("question, matched_text", [
    ("G - quadruplex", "G  quadruplex"),  # detached
    ("-5 degrees", "5 degrees"),  # before a digit
    ("E2f-1, -2, -3", "E2f-1, 2, 3"),
    ("(H2A)-histone", "(H2A)histone"),  # after an operator character
    ('"x-y"-z', '"x-y"z'),  # after a closing quote
    ("--taxi", "taxi"),
    ('taxi -"unclosed phrase', 'taxi "unclosed phrase'),
])
def test_other_dashes_that_postgresql_reads_as_not_are_removed_from_the_matched_text_only(question, matched_text):
    assert search_query_parse(question) == SearchQuery(embedded_text=question, scored_text=question,
                                                       matched_text=matched_text, excluded=())


@pytest.mark.parametrize("text", ["x-ray", "T-ALL", "co--op", '"taxi -receipt"', "a\u00a0-b", "taxi:-receipt"])
def test_dashes_inside_words_and_quotes_stay(text):
    assert without_negation(text) == text
    assert search_query_parse(text).excluded == ()


def test_a_question_of_exclusions_only_leaves_nothing_to_embed_or_match():
    parsed = search_query_parse('-receipt -"taxi rides"')
    assert (parsed.embedded_text, parsed.scored_text.strip(), parsed.matched_text.strip()) == ("", "", "")
    assert parsed.excluded == ("receipt", '"taxi rides"')


def test_segmentation_runs_on_the_split_texts_before_negation_is_removed():
    spaced = search_query_parse("北京-大学 -上海", segment=lambda text: text.replace("北京", "北京 "))
    assert spaced.scored_text == "北京 -大学 " and spaced.matched_text == "北京 大学 "  # the blank made a NOT
    assert spaced.excluded == ("上海",)

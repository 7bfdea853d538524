"""LLM deltas -> sentences for TTS."""

from avatarchat.sentences import SentenceChunker, clean_for_speech


def chunk(deltas, **kw):
    c = SentenceChunker(**kw)
    out = [s for d in deltas for s in c.feed(d)]
    rest = c.flush()
    return out + ([rest] if rest else [])


def test_sentences_come_out_as_soon_as_they_end():
    c = SentenceChunker()
    assert list(c.feed("Hello there")) == []
    assert list(c.feed(".")) == []              # no cut until whitespace proves the sentence ended
    assert list(c.feed(" How")) == ["Hello there."]
    assert list(c.feed(" are you?")) == []
    assert c.flush() == "How are you?"


def test_numbers_and_token_boundaries_do_not_cut():
    assert chunk(["It costs 3", ".5 dollars", ". Fine"]) == ["It costs 3.5 dollars.", "Fine"]


def test_exclamations_questions_ellipses_and_cjk():
    assert chunk(["Wow! Really? Well… ok"]) == ["Wow!", "Really?", "Well…", "ok"]
    assert chunk(["你好。我很好！"]) == ["你好。", "我很好！"]


def test_a_run_on_reply_is_cut_at_a_clause_before_the_limit():
    text = "one two three, four five six seven eight nine ten eleven twelve"
    out = chunk([text], max_chars=30, first_max_chars=30)
    assert out[0] == "one two three," and all(len(s) <= 30 for s in out)
    assert " ".join(out) == text


def test_markup_is_dropped_but_letters_accents_and_apostrophes_stay():
    assert clean_for_speech("**Café** isn't `naïve` — ¿qué? Ünïcødé 日本語 #1") == \
        "Café isn't naïve — ¿qué? Ünïcødé 日本語 1"


def test_the_first_chunk_may_end_at_a_clause_so_the_voice_starts_early():
    words = "Well, my name is Ava and I am a friendly avatar, and I like to talk about the sky".split(" ")
    c = SentenceChunker()
    out = []
    for i, w in enumerate(words):
        out += c.feed(w if i == 0 else " " + w)
    # "Well," is too short to stand alone; the first clause past 30 characters ends the first chunk,
    # later clauses wait for their sentence to end.
    assert out == ["Well, my name is Ava and I am a friendly avatar,"]
    assert c.flush() == "and I like to talk about the sky"


def test_a_first_sentence_without_clauses_is_cut_at_a_space_once_long():
    text = "word " * 40
    out = chunk([text])
    assert len(out[0]) <= 100 and out[0].endswith("word")
    assert " ".join(out).split() == text.split()

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


def test_cjk_closing_quotes_stay_with_their_sentence():
    assert chunk(["他说：“你好。”然后走了。"]) == ["他说：“你好。”", "然后走了。"]


def test_a_chinese_first_clause_ends_at_a_cjk_comma_by_spoken_length():
    # 11 characters = 33 letters' worth: long enough to start the voice at the comma
    # streamed a character at a time, as an LLM writes it
    assert chunk(list("今天天气很好我们一起去，公园散步好不好？")) == ["今天天气很好我们一起去，", "公园散步好不好？"]
    # a short clause (3 characters = 9) is not cut off on its own
    assert chunk(list("你好，今天怎么样？")) == ["你好，今天怎么样？"]


def test_a_chinese_run_on_is_cut_at_cjk_punctuation_and_loses_nothing():
    text = "我们在这里讨论很多事情；" * 12  # no sentence end at all
    out = chunk([text], max_chars=60, first_max_chars=60)
    assert "".join(out) == text
    assert all(s.endswith("；") for s in out[:-1])
    from avatarchat.sentences import spoken_length
    assert all(spoken_length(s) <= 60 for s in out)


def test_cjk_without_any_punctuation_is_cut_by_length_never_dropped():
    text = "中" * 50
    out = chunk([text], max_chars=30, first_max_chars=30)
    assert "".join(out) == text and all(len(s) <= 10 for s in out)


def test_japanese_and_korean_text_pass_through():
    assert chunk(["こんにちは。元気ですか？"]) == ["こんにちは。", "元気ですか？"]
    assert chunk(["안녕하세요. 반갑습니다!"]) == ["안녕하세요.", "반갑습니다!"]

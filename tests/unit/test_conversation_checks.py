"""The load test's per-turn checks (load_tests/conversation.py judge_turn): each way a turn can be
incomplete or someone else's is caught, and a good turn passes."""

from load_tests.conversation import TurnEvidence, judge_turn, similarity

QS = ["What is your name?", "What colour is the sky?", "Can you tell me a joke?"]


def evidence(**kw) -> TurnEvidence:
    base = dict(said=QS[0], others=QS, heard="What is your name?", reply_audio_s=3.0, sounding_s=2.2,
                idle_sounding_s=0.0)
    return TurnEvidence(**{**base, **kw})


def test_a_complete_own_turn_passes():
    assert judge_turn(evidence()) is None
    assert judge_turn(evidence(heard="what is you name")) is None  # ASR wording varies a little


def test_no_transcript_or_no_reply_fails():
    assert "no user transcript" in judge_turn(evidence(heard=None))
    assert "no complete reply" in judge_turn(evidence(reply_audio_s=None))
    assert "no sounding audio" in judge_turn(evidence(sounding_s=0.0))


def test_someone_elses_utterance_fails():
    assert "does not match" in judge_turn(evidence(heard="Can you tell me a joke?"))
    # close enough to ours, but closer to another user's
    e = evidence(said="What is the name?", others=QS + ["What is the name?"], heard="What is your name?")
    assert "another user's" in judge_turn(e)


def test_someone_elses_audio_fails():
    assert "someone else's audio" in judge_turn(evidence(sounding_s=6.0))
    assert "while the avatar was idle" in judge_turn(evidence(idle_sounding_s=1.5))


def test_similarity_is_word_level():
    assert similarity("What is your name?", "what is your name") == 1.0
    assert similarity("What is your name?", "the sky is blue") < 0.3

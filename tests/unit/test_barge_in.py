from avatarchat.conversation.barge_in import BargeIn, BargeInDetector


def detector(**kw):
    opts = dict(chunk_s=0.032, threshold=0.5, neg_threshold=0.35, min_speech_s=0.3, resume_after_s=0.2)
    return BargeInDetector(**{**opts, **kw})


def run(d, probabilities):
    return [(i, a) for i, p in enumerate(probabilities) if (a := d.feed(p)) is not None]


def test_voice_pauses_at_once_and_interrupts_after_min_speech():
    actions = run(detector(), [0.1] * 3 + [0.9] * 20)
    assert actions[0] == (3, BargeIn.PAUSE)
    # 0.3 s of voice = 10 chunks of 32 ms: the 10th voiced chunk decides
    assert actions[1] == (12, BargeIn.INTERRUPT)
    assert len(actions) == 2


def test_a_short_noise_pauses_then_resumes_without_interrupting():
    actions = run(detector(), [0.9] * 4 + [0.05] * 10)  # 128 ms of sound, then quiet
    assert [a for _, a in actions] == [BargeIn.PAUSE, BargeIn.RESUME]
    assert actions[1][0] == 4 + 7 - 1  # 200 ms of quiet = 7 chunks


def test_a_dip_between_the_thresholds_keeps_the_voice_run():
    probs = [0.9] * 5 + [0.4] * 3 + [0.9] * 5
    assert [a for _, a in run(detector(), probs)] == [BargeIn.PAUSE, BargeIn.INTERRUPT]


def test_after_an_interruption_nothing_more_until_reset():
    d = detector()
    run(d, [0.9] * 12)
    assert d.decided and run(d, [0.9] * 20) == []
    d.reset()
    assert run(d, [0.9])[0][1] is BargeIn.PAUSE

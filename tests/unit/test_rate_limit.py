from avatarchat.rate_limit import TokenBucket


def test_a_burst_then_the_average_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert bucket.allow() and not bucket.allow()
    now[0] += 100  # refills only up to the burst
    assert sum(bucket.allow() for _ in range(10)) == 3

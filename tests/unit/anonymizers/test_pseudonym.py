import hashlib

import pytest

from anonymizers.pseudonym import Pseudonymizer

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
DAY = 86400


@pytest.mark.parametrize(
    "ts_a, ts_b, same",
    [
        (0, 0, True),
        (0, DAY - 0.001, True),
        (10 * DAY + 5, 10 * DAY + 80000, True),
        (DAY - 0.001, DAY, False),
        (0, 2 * DAY, False),
        (-1, 0, False),
    ],
)
def test_stable_within_period_only(ts_a, ts_b, same):
    p = Pseudonymizer(SECRET)
    assert (p.pseudonym("alice", ts_a) == p.pseudonym("alice", ts_b)) is same


@pytest.mark.parametrize("user_id", ["alice", "bob", "u-000001", "é✓", "x" * 128])
def test_properties(user_id):
    p, q = Pseudonymizer(SECRET), Pseudonymizer(OTHER_SECRET)
    value = p.pseudonym(user_id, 1000)
    assert len(value) == 32 and int(value, 16) >= 0
    assert value != q.pseudonym(user_id, 1000)
    assert value != p.pseudonym(user_id + "_", 1000)
    data = user_id.encode()
    for plain in (hashlib.sha256(data).hexdigest(), hashlib.sha256(SECRET + data).hexdigest()):
        assert value != plain and value != plain[:32]
    assert user_id not in value


def test_rotation_period_is_configurable():
    p = Pseudonymizer(SECRET, rotation_s=3600)
    assert p.pseudonym("alice", 0) == p.pseudonym("alice", 3599)
    assert p.pseudonym("alice", 0) != p.pseudonym("alice", 3600)
    assert p.period(7200) == 2


def test_distinct_users_get_distinct_pseudonyms():
    p = Pseudonymizer(SECRET)
    values = {p.pseudonym(f"user-{i}", 0) for i in range(5000)}
    assert len(values) == 5000


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 15])
def test_short_secret_refused(secret):
    with pytest.raises(ValueError, match=f"secret is {len(secret)} bytes long; at least 16"):
        Pseudonymizer(secret)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(secret="a" * 32), "must be bytes"),
        (dict(secret=SECRET, rotation_s=0), "rotation_s=0"),
        (dict(secret=SECRET, rotation_s=1.5), "rotation_s=1.5"),
    ],
)
def test_bad_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Pseudonymizer(**kwargs)


def test_secret_not_in_repr_and_bad_inputs():
    p = Pseudonymizer(SECRET)
    assert repr(SECRET) not in repr(p) and "secret" not in repr(p)
    with pytest.raises(ValueError, match="user_id=''"):
        p.pseudonym("", 0)
    with pytest.raises(ValueError, match="at_ts=inf"):
        p.pseudonym("alice", float("inf"))

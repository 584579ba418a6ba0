from lib.bounded import BoundedCache


def test_a_bounded_cache_empties_itself_instead_of_growing_past_its_limit():
    cache = BoundedCache(3)
    for key in "abc":
        cache[key] = key.upper()
    cache["a"] = "again"  # a key already held replaces its value, no clearing
    assert dict(cache) == {"a": "again", "b": "B", "c": "C"}
    cache["d"] = "D"
    assert dict(cache) == {"d": "D"}
    assert len(cache) <= cache.limit

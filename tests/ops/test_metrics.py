"""ops.metrics' batching gives what prometheus_client's own updates give."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ops import metrics


def exposition(registry: CollectorRegistry, prefix: str) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return sorted(line.replace(prefix, "m_") for line in lines if line.startswith(prefix) and "_created" not in line)


async def test_batched_counts_and_observations_equal_direct_ones_once_flushed():
    registry = CollectorRegistry()
    batched = {
        "h": Histogram("a_h_seconds", "h", ["e"], buckets=(0.1, 1.0, 10.0), registry=registry),
        "c": Counter("a_c", "c", ["e"], registry=registry),
        "g": Gauge("a_g", "g", registry=registry),
    }
    direct = {
        "h": Histogram("b_h_seconds", "h", ["e"], buckets=(0.1, 1.0, 10.0), registry=registry),
        "c": Counter("b_c", "c", ["e"], registry=registry),
        "g": Gauge("b_g", "g", registry=registry),
    }
    for value in (0.05, 0.1, 0.100001, 0.5, 1.0, 5.0, 10.0, 50.0):
        metrics.observe(batched["h"], ("x",), value)
        direct["h"].labels("x").observe(value)
    for amount in (1, 2, 3.5):
        metrics.add(batched["c"], ("y",), amount)
        direct["c"].labels("y").inc(amount)
    metrics.add(batched["g"], (), 3)
    metrics.add(batched["g"], (), -1)
    direct["g"].set(2)
    # On an event loop the updates wait for the flush (once per FLUSH_S, or before a scrape).
    assert not [line for line in exposition(registry, "a_") if "_count" in line or line.startswith("a_c_total")]
    metrics.flush()
    assert exposition(registry, "a_") == exposition(registry, "b_")
    assert 'm_h_seconds_bucket{e="x",le="0.1"} 2.0' in exposition(registry, "a_")

"""The one shape of the per-process caches of the request path (key scopes, prices, counter ids,
upstream targets, URL matches, last-used touches).

Each maps a key that can only grow in number (keys, models, allocations × periods) to a value that
is cheap to load again, so bounding it by emptying it when full is enough: no eviction order to
keep up on every hit (a read stays a plain dict lookup), and a full reload costs one query per key
still in use.
"""

from typing import Any


class BoundedCache(dict):
    """A dict that empties itself before it would hold more than `limit` keys."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        if len(self) >= self.limit and key not in self:
            self.clear()
        super().__setitem__(key, value)

"""The per-worker LRU of style inversions (consumer/style_cache.py)."""
from consumer.style_cache import StyleCache, file_hash


class _Entry:
    def __init__(self, name):
        self.name = name

    def nbytes(self):
        return 10


def test_a_style_is_computed_once_and_then_reused():
    cache, calls = StyleCache(2), []
    make = lambda: calls.append("a") or _Entry("a")
    first, second = cache.get("a", make), cache.get("a", make)
    assert first is second and calls == ["a"] and (cache.hits, cache.misses) == (1, 1)


def test_the_least_recently_used_style_is_evicted_beyond_capacity():
    cache = StyleCache(2)
    for key in ("a", "b"):
        cache.get(key, lambda: _Entry(key))
    cache.get("a", lambda: _Entry("a"))  # a is now the most recent
    cache.get("c", lambda: _Entry("c"))
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    assert cache.nbytes() == 20


def test_capacity_zero_keeps_nothing():
    cache = StyleCache(0)
    cache.get("a", lambda: _Entry("a"))
    assert len(cache) == 0 and "a" not in cache


def test_the_file_hash_follows_the_bytes_not_the_name(tmp_path):
    (tmp_path / "x.png").write_bytes(b"same")
    (tmp_path / "y.png").write_bytes(b"same")
    (tmp_path / "z.png").write_bytes(b"other")
    assert file_hash(tmp_path / "x.png") == file_hash(tmp_path / "y.png") != file_hash(tmp_path / "z.png")

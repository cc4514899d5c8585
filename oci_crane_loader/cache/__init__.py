"""The cache: ``store`` owns the layout on disk (every path under the cache root, lock names included) and lists
what it holds as typed entries; ``listing``, ``verify`` and ``prune`` work on those entries only."""

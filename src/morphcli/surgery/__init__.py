"""Change a graph's widths: index maps applied to a graph (remove, keep, replicate), dead and
constant channels, importance, width choices, and ``prune`` and ``expand`` as thin uses of
them with the shared checked write."""

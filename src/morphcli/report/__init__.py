"""What the user sees: the analysis document, the prune/expand width report, the shrink
summary and width charts; each a JSON-ready dict with a rich rendering drawn from it."""

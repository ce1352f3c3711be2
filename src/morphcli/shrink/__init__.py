"""MorphNet's Algorithm 1 (``algorithm``) over a run that is read and checked once up front
(``run``), configured by ``config``."""

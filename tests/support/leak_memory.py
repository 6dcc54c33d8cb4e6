"""Module-level state of the planted target ``planted_leaks.Sticky``: which trainer used it first."""

FIRST = []


def first_trainer(trainer: str) -> str:
    if not FIRST:
        FIRST.append(trainer)
    return FIRST[0]

"""How a tuning run spends its trials: ``--trials`` is the total over every task, never
exceeded.

Each task that computes anything is worth a share in proportion to its work (flops x calls),
and a share is at least one search round (``per_iter`` candidates, the untuned baseline
included): less than a round gives the cost model nothing to learn from. When the budget
cannot give every such task a round, the largest tasks get one and the rest none (they keep
their untuned schedules).
"""

from __future__ import annotations

from ..errors import UserError


def check_trials(trials: int, per_iter: int) -> None:
    """``--trials`` and ``--per-iter`` must be positive integers.

    Raises
    ------
    UserError
        Either is not.
    """
    for flag, v in (("--trials", trials), ("--per-iter", per_iter)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{flag} must be a positive integer, not {v!r}")


def budgets(weights: list[float], trials: int, per_iter: int) -> list[int]:
    """Trials per task for task weights ``weights`` (flops x calls; 0: pure data movement,
    never tuned), summing to at most ``trials``.

    Every chosen task gets at least ``min(per_iter, trials)``; the tasks chosen are the
    heaviest, as many as ``trials // per_iter`` (at least one); the trials left over go in
    proportion to weight, the remainder of the rounding to the heaviest.
    """
    check_trials(trials, per_iter)
    order = sorted((i for i, w in enumerate(weights) if w > 0), key=lambda i: -weights[i])
    chosen = order[:max(1, trials // per_iter)]
    out = [0] * len(weights)
    if not chosen:
        return out
    floor = min(per_iter, trials)
    spare = trials - floor * len(chosen)
    total = sum(weights[i] for i in chosen)
    for i in chosen:
        out[i] = floor + int(spare * weights[i] / total)
    out[chosen[0]] += trials - sum(out)  # what the rounding down left
    return out


def plan_note(weights: list[float], plan: list[int], per_iter: int) -> str | None:
    """One line saying which tasks the budget leaves out, or None when none is."""
    computing = sum(w > 0 for w in weights)
    tuned = sum(b > 0 for b in plan)
    if tuned == computing:
        return None
    return (f"{sum(plan)} trials give {tuned} of {computing} kernels a round of {per_iter} "
            f"(the largest first); the other {computing - tuned} keep their untuned schedules "
            f"(--trials {per_iter * computing} tunes them all)")

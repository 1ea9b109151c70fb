"""When a newly registered version (the challenger) replaces the champion.

The rule, in order:

1. A challenger with a domain that fails a quality gate is never promoted (nor aliased).
2. Without a champion, the challenger is promoted.
3. A domain the champion serves but the challenger does not is never silently lost: the
   challenger is refused, unless the policy explicitly allows dropping domains.
4. On the domains both serve, both models score the challenger's test images of those
   domains; the challenger is promoted when its F1 there is at least the champion's.
   Domains new to the challenger have no champion figures: they are judged by the
   quality gates alone (rule 1).
5. With no shared domain, the challenger (having passed the gates) is promoted.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionPolicy:
    allow_dropped_domains: bool = False


@dataclass(frozen=True)
class SharedComparison:
    """Selection F1 of both models on the same test images of their shared domains."""

    challenger_f1: float
    champion_f1: float
    test_images: int


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    shared: tuple[str, ...] = ()
    new: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()


def domain_changes(challenger: set[str], champion: set[str]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(shared, new to the challenger, dropped by the challenger), each sorted."""
    return tuple(sorted(challenger & champion)), tuple(sorted(challenger - champion)), tuple(sorted(champion - challenger))


def decide_promotion(
    challenger_domains: set[str],
    champion_domains: set[str] | None,
    comparison: SharedComparison | None,
    failed_gate_domains: list[str],
    policy: PromotionPolicy,
) -> PromotionDecision:
    """Apply the module's rule. ``champion_domains`` None: there is no champion. ``comparison``
    is needed only when the two share a domain; None there refuses (nothing to compare on)."""
    if failed_gate_domains:
        return PromotionDecision(False, f"quality gates failed for {', '.join(sorted(failed_gate_domains))}")
    if champion_domains is None:
        return PromotionDecision(True, "no champion yet", new=tuple(sorted(challenger_domains)))
    shared, new, dropped = domain_changes(challenger_domains, champion_domains)
    judged_new = f"; new domains judged by the quality gates: {', '.join(new)}" if new else ""
    if dropped and not policy.allow_dropped_domains:
        reason = f"challenger drops domains the champion serves: {', '.join(dropped)} (allow_dropped_domains is off)"
        return PromotionDecision(False, reason, shared, new, dropped)
    if not shared:
        return PromotionDecision(True, "no domain shared with the champion" + judged_new, shared, new, dropped)
    if comparison is None or comparison.test_images == 0:
        return PromotionDecision(False, f"no test images of the shared domains {', '.join(shared)} to compare on", shared, new, dropped)
    promote = comparison.challenger_f1 >= comparison.champion_f1
    reason = (
        f"challenger F1 {comparison.challenger_f1:.4f} {'>=' if promote else '<'} champion F1 {comparison.champion_f1:.4f}"
        f" on {comparison.test_images} test images of the shared domains {', '.join(shared)}" + judged_new
    )
    if dropped:
        reason += f"; dropped (allowed): {', '.join(dropped)}"
    return PromotionDecision(promote, reason, shared, new, dropped)

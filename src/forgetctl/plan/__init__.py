"""The plan step: filter (FIT) and expand (CAE) a deletion request into a prompt set.

Entry point: :func:`plan_request`. Modules: ``text`` (name forms), ``embed`` (sentence
embeddings, faiss search), ``expand`` (forget prompt kinds), ``filter`` (probe,
near-duplicates, scope guard), ``planner`` (the whole step).
"""

from forgetctl.plan.planner import PlanOutcome, Verdict, plan_request

__all__ = ["PlanOutcome", "Verdict", "plan_request"]

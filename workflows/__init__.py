"""Agent-style layer over the core: Session, planner and workflows."""
from latentlm.workflows.planner import Plan, plan
from latentlm.workflows.session import Result, Session

__all__ = ["Plan", "Result", "Session", "plan"]

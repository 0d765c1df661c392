"""Agent-style layer over the core: Session, planner, workflows and their Result."""
from latentlm.workflows.planner import Plan, Step, plan
from latentlm.workflows.result import Entity, Result
from latentlm.workflows.session import Session

__all__ = ["Entity", "Plan", "Result", "Session", "Step", "plan"]

"""Agent-style layer over the core: Session, planner, workflows and their Result."""
from latentlm.workflows.planner import Given, History, Plan, Ref, Remembered, Step, plan
from latentlm.workflows.result import Entity, Result
from latentlm.workflows.session import Session

__all__ = ["Entity", "Given", "History", "Plan", "Ref", "Remembered", "Result", "Session", "Step", "plan"]

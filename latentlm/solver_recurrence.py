"""DPM-Solver++ sampling (multistep, order <= 2) as an affine recurrence with scalar coefficients per step,
read off diffusers' own scheduler, so that a fused kernel can run the whole loop without calling it.

Each `DPMSolverMultistepScheduler.step` (no thresholding, no SDE noise) is linear in what it reads:
the sample x, the model output o and the converted output it stored at the step before (m_prev):

    m      = P x + Q o                   (`convert_model_output`: x0_hat for dpmsolver++, kept for the next step)
    x_next = A x + B o + C m_prev        (the first- or second-order update; C = 0 for first-order steps)

So the five numbers (P, Q, A, B, C) of each step are what `step` gives for unit inputs: one call per step on
three lanes, x = (1, 0, 0), o = (0, 1, 0), m_prev = (0, 0, 1), reads them all (`_probe`). No scheduler
formula is written here: first/second order, `lower_order_final`, the clipped schedule, v- or
epsilon-prediction are all diffusers' choices. Computed once per (scheduler class, config, steps).
"""
from __future__ import annotations

import functools
import json

import torch
from diffusers import DPMSolverMultistepScheduler
from torch import Tensor

COLUMNS = ("P", "Q", "A", "B", "C")  # the coefficients' order in a row of `solver_coefficients`


def solver_coefficients(scheduler: DPMSolverMultistepScheduler, steps: int) -> Tensor:
    """The coefficients of the `steps`-step loop of a scheduler made like `scheduler`: [steps, 5] fp32,
    columns `COLUMNS`, one row per step (cached; the caller's scheduler is not touched)."""
    config = json.dumps(dict(scheduler.config), sort_keys=True, default=str)
    return _coefficients(type(scheduler), config, steps).clone()


@functools.lru_cache(maxsize=64)
def _coefficients(cls: type[DPMSolverMultistepScheduler], config: str, steps: int) -> Tensor:
    sched = cls.from_config(json.loads(config))
    c = sched.config
    if c.thresholding or c.algorithm_type.startswith("sde") or c.solver_order > 2:
        raise ValueError("only the deterministic, unthresholded solver of order <= 2 is an affine "
                         f"recurrence of one stored output (got {c.algorithm_type}, order {c.solver_order}, "
                         f"thresholding {c.thresholding})")
    sched.set_timesteps(steps, device="cpu")
    return _probe(sched)


def _probe(sched: DPMSolverMultistepScheduler) -> Tensor:
    """Run the schedule's loop on three unit lanes (sample, model output, stored output) -> [steps, 5]."""
    lanes = torch.eye(3)  # row 0: x, row 1: o, row 2: m_prev; lane j holds the j-th unit input
    rows = []
    for t in sched.timesteps:
        sched.model_outputs[-1] = lanes[2].clone()  # m_prev = e_2 (a first-order step does not read it)
        x_next = sched.step(lanes[1].clone(), t, lanes[0].clone(), return_dict=False)[0]  # [3]
        m = sched.model_outputs[-1]  # [3], what the next step reads as m_prev
        if m[2] != 0:
            raise ValueError("the converted model output depends on the previous one: not this recurrence")
        rows.append(torch.stack([m[0], m[1], x_next[0], x_next[1], x_next[2]]))
    return torch.stack(rows).float()  # [steps, 5]


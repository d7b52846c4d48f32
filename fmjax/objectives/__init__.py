"""Registry of paradigms: `get(config.objective)` returns the objective that trains it."""

from fmjax.objectives.base import Objective


def _causal_lm():
  from fmjax.objectives.causal_lm import CausalLm
  return CausalLm()


def _masked_lm():
  from fmjax.objectives.masked_lm import MaskedLm
  return MaskedLm()


def _contrastive():
  from fmjax.objectives.contrastive import Contrastive
  return Contrastive()


def _diffusion():
  from fmjax.objectives.diffusion import Diffusion
  return Diffusion()


# Lazy constructors: importing one paradigm never pulls in another's dependencies.
REGISTRY = {"causal_lm": _causal_lm, "masked_lm": _masked_lm, "contrastive": _contrastive,
            "diffusion": _diffusion}


def get(name: str) -> Objective:
  if name not in REGISTRY:
    raise ValueError(f"config.objective={name!r}: choose one of {sorted(REGISTRY)}")
  return REGISTRY[name]()

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


def _speech_masked():
  from fmjax.objectives.speech_masked import SpeechMasked
  return SpeechMasked()


def _speech_seq2seq():
  from fmjax.objectives.speech_seq2seq import SpeechSeq2Seq
  return SpeechSeq2Seq()


# Lazy constructors: importing one paradigm never pulls in another's dependencies.
REGISTRY = {"causal_lm": _causal_lm, "masked_lm": _masked_lm, "contrastive": _contrastive,
            "diffusion": _diffusion, "speech_masked": _speech_masked, "speech_seq2seq": _speech_seq2seq}


def get(name: str) -> Objective:
  if name not in REGISTRY:
    raise ValueError(f"config.objective={name!r}: choose one of {sorted(REGISTRY)}")
  return REGISTRY[name]()

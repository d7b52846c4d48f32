"""fmjax: pretraining foundation models in JAX under one trainer."""

__version__ = "0.1.0"

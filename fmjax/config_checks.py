"""Validation of a run's config before anything is built or compiled.

Every failure is a `ConfigError` naming the field, the value and what is allowed; `fmjax.main`
turns it into a one-line message and a non-zero exit.
"""

from fmjax import nonfinite, parallel, paths
from fmjax.field_checks import ConfigError, check as _check  # pylint: disable=unused-import  (ConfigError: re-exported)
from fmjax.models import attention, transformer
from fmjax.optim import DECAYS


def _positive_int(config, field: str) -> None:
  value = _get(config, field)
  _check(isinstance(value, int) and value > 0, field, value, "must be a positive integer")


def _get(config, field: str):
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def validate(config, *, num_devices: int, process_count: int = 1) -> None:
  """Raise ConfigError for the first field out of range. Objective-specific checks follow in
  `objective.validate`."""
  for field in ("train.steps", "train.batch_size", "train.grad_accum_steps", "train.log_every",
                "checkpoint.every", "checkpoint.keep"):
    _positive_int(config, field)
  _check(config.train.eval_every >= 0, "train.eval_every", config.train.eval_every,
         "must be >= 0 (0: evaluate only at the end)")
  _check(config.train.get("on_nonfinite", "stop") in nonfinite.MODES, "train.on_nonfinite",
         config.train.get("on_nonfinite"), f"choose one of {nonfinite.MODES}")
  _check(isinstance(config.checkpoint.get("allow_config_change", False), bool), "checkpoint.allow_config_change",
         config.checkpoint.get("allow_config_change"), "must be True or False")
  _check(config.data.prefetch >= 0, "data.prefetch", config.data.prefetch, "must be >= 0")
  _check(0.0 < config.data.eval_fraction < 1.0, "data.eval_fraction", config.data.eval_fraction,
         "must be in (0, 1)")

  o = config.optim
  _check(o.learning_rate > 0, "optim.learning_rate", o.learning_rate, "must be > 0")
  _check(0 <= o.warmup_steps <= config.train.steps, "optim.warmup_steps", o.warmup_steps,
         f"must be in [0, config.train.steps={config.train.steps}]")
  _check(o.decay in DECAYS, "optim.decay", o.decay, f"choose one of {DECAYS}")
  _check(0.0 <= o.end_lr_fraction <= 1.0, "optim.end_lr_fraction", o.end_lr_fraction, "must be in [0, 1]")
  _check(0.0 <= o.b1 < 1.0, "optim.b1", o.b1, "must be in [0, 1)")
  _check(0.0 <= o.b2 < 1.0, "optim.b2", o.b2, "must be in [0, 1)")
  _check(o.eps > 0, "optim.eps", o.eps, "must be > 0")
  _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
  _check(o.grad_clip_norm >= 0, "optim.grad_clip_norm", o.grad_clip_norm, "must be >= 0 (0: no clipping)")


  try:
    data, fsdp, tensor = parallel.resolve_mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  batch, accum = config.train.batch_size, config.train.grad_accum_steps
  _check(batch % accum == 0, "train.batch_size", batch,
         f"must be divisible by config.train.grad_accum_steps={accum}")
  _check((batch // accum) % (data * fsdp) == 0, "train.batch_size", batch,
         f"each micro-batch ({batch // accum}) must divide over the batch axes of the mesh "
         f"(data*fsdp = {data}*{fsdp} = {data * fsdp})")
  _check(batch % process_count == 0, "train.batch_size", batch, f"must divide over {process_count} processes")
  for section in transformer_sections(config.model, "model"):
    validate_transformer(config, section, fsdp=fsdp, tensor=tensor)

  subtrees = config.checkpoint.get("init_subtrees", "")
  _check(not subtrees or bool(config.checkpoint.init_from), "checkpoint.init_subtrees", subtrees,
         "names parts of the run in config.checkpoint.init_from, which is empty")
  if config.checkpoint.init_from:
    _check(paths.isdir(paths.absolute(config.checkpoint.init_from)), "checkpoint.init_from", config.checkpoint.init_from,
           "must be the workdir of an earlier run (directory not found)")


def transformer_sections(node, path: str) -> list[str]:
  """Dotted paths of the transformer stacks in config.model: the model itself (GPT, BERT) or its
  towers (model.image, model.text), recognised by their num_heads field."""
  found = [path] if "num_heads" in node else []
  for key in sorted(node.keys()):
    if hasattr(node[key], "keys"):
      found += transformer_sections(node[key], f"{path}.{key}")
  return found


def validate_transformer(config, section: str, *, fsdp: int = 1, tensor: int = 1) -> None:
  """The fields of one `config_defaults.transformer()` section, and that it shards on the mesh."""
  m = _get(config, section)
  for field in ("num_layers", "num_heads", "embed_dim", "mlp_dim"):
    _positive_int(config, f"{section}.{field}")
  _check(0.0 <= m.dropout < 1.0, f"{section}.dropout", m.dropout, "must be in [0, 1)")
  _check(m.dtype in transformer.DTYPES, f"{section}.dtype", m.dtype, f"choose one of {tuple(transformer.DTYPES)}")
  _check(m.attention in attention.IMPLEMENTATIONS, f"{section}.attention", m.attention,
         f"choose one of {attention.IMPLEMENTATIONS}")
  _check(m.remat in transformer.REMAT_POLICIES, f"{section}.remat", m.remat,
         f"choose one of {transformer.REMAT_POLICIES}")
  _check(m.num_heads % tensor == 0, f"{section}.num_heads", m.num_heads,
         f"must be divisible by config.mesh.tensor={tensor}")
  _check(m.mlp_dim % tensor == 0, f"{section}.mlp_dim", m.mlp_dim, f"must be divisible by config.mesh.tensor={tensor}")
  _check(m.embed_dim % fsdp == 0, f"{section}.embed_dim", m.embed_dim, f"must be divisible by config.mesh.fsdp={fsdp}")

"""Devices, meshes and sharding: the one place that maps logical axis names onto the mesh.

The mesh has three axes: 'data' (pure data parallel), 'fsdp' (data parallel that also shards
parameters and optimizer state) and 'tensor' (Megatron-style tensor parallelism over heads and
MLP width). Models name their axes logically; `LOGICAL_RULES` says where each name goes.

`jax.jit` over a Mesh with named shardings is the whole parallelism: `pmap` is only a thin
wrapper over `jit(shard_map)` since JAX 0.10 and is not used.
"""

import math
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis (or None: replicated along every mesh axis).
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("act_embed", None),             # activations keep their feature dim whole (params use "embed")
    ("length", None),
    ("layers", None),
)


def resolve_mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Sizes for ('data', 'fsdp', 'tensor'); one of them may be -1 (the devices left over)."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  fill = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  bad = [f"config.mesh.{a}={s}" for a, s in zip(MESH_AXES, sizes) if s == 0 or s < -1]
  if bad:
    raise ValueError(f"{', '.join(bad)}: mesh sizes must be positive, or -1 for the devices left over")
  if len(fill) > 1:
    raise ValueError(f"config.mesh: only one axis may be -1, got {', '.join('config.mesh.' + a for a in fill)}")
  fixed = math.prod(s for s in sizes if s != -1)
  if fill:
    if num_devices % fixed:
      raise ValueError(f"config.mesh: {num_devices} devices do not divide by the fixed axes' product {fixed} "
                       f"({dict(zip(MESH_AXES, sizes))})")
    sizes[MESH_AXES.index(fill[0])] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh: data*fsdp*tensor = {math.prod(sizes)} but there are {num_devices} devices "
                     f"({dict(zip(MESH_AXES, sizes))}); use -1 on one axis to fill")
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Optional[Sequence[Any]] = None) -> jax.sharding.Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_config, len(devices))
  # Auto axes: the logical-rules style of sharding fails type checks under Explicit axes.
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(names: Sequence[Optional[str]]) -> P:
  rules = dict(LOGICAL_RULES)
  return P(*(rules.get(n) if n is not None else None for n in names))


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
  """Sharding hint for an activation, by logical names; a no-op when no mesh is active."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dim split over data and fsdp, everything else replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded over the batch axes of the mesh.

  Each process passes only its own rows; the global batch is their concatenation in process
  order."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
          for k, v in local_batch.items()}


def batch_divisor(mesh: jax.sharding.Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> None:
  """Multi-host start-up. On TPU pods and SLURM/Open MPI clusters JAX finds its peers itself;
  elsewhere pass the coordinator address, the process count and this process's id."""
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()

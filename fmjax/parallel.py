"""Devices, meshes and sharding: the one place that maps logical axis names onto the mesh.

The mesh has three axes: 'data' (pure data parallel), 'fsdp' (data parallel that also shards
parameters and optimizer state) and 'tensor' (Megatron-style tensor parallelism over heads and
MLP width). Models name their axes logically; `LOGICAL_RULES` says where each name goes.

Multi-slice (hybrid) meshes: with `config.mesh.dcn_data = S > 1` the data axis spans S slices
(TPU slices joined by the data-center network, or GPU nodes): each slice holds data/S of the
data axis and the whole of fsdp and tensor, so only the data-parallel gradient reduction
crosses the slow links. The axis names stay the same, so no sharding rule changes.

`jax.jit` over a Mesh with named shardings is the whole parallelism: `pmap` is only a thin
wrapper over `jit(shard_map)` since JAX 0.10 and is not used.
"""

import math
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
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
  """Sizes for ('data', 'fsdp', 'tensor'); one of them may be -1 (the devices left over).

  The sizes are global: with config.mesh.dcn_data slices, `data` counts the whole data axis
  across slices (which it must divide)."""
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
  _check_slices(mesh_config, tuple(sizes), num_devices)
  return tuple(sizes)


def num_slices(mesh_config: Mapping[str, int]) -> int:
  """config.mesh.dcn_data: how many slices the data axis spans (1 where the field is absent, as
  in the saved configs of older runs)."""
  value = mesh_config.get("dcn_data", 1)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"config.mesh.dcn_data={value!r}: must be a positive integer (1 = one slice, no DCN axis)")
  return int(value)


def _check_slices(mesh_config: Mapping[str, int], shape: tuple[int, ...], num_devices: int) -> None:
  slices = num_slices(mesh_config)
  if num_devices % slices:
    raise ValueError(f"config.mesh.dcn_data={slices}: {num_devices} devices do not split into {slices} equal slices")
  if shape[0] % slices:
    raise ValueError(f"config.mesh.dcn_data={slices} must divide the data axis (config.mesh.data resolves to "
                     f"{shape[0]}): each slice holds data/dcn_data of it and all of fsdp*tensor "
                     f"({shape[1]}*{shape[2]}), so a slice's {num_devices // slices} devices must be a multiple "
                     f"of fsdp*tensor")


def make_mesh(mesh_config: Mapping[str, int], devices: Optional[Sequence[Any]] = None) -> jax.sharding.Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_config, len(devices))
  slices = num_slices(mesh_config)
  if slices == 1:
    device_array = np.asarray(devices).reshape(shape)
  else:
    device_array = hybrid_device_array(shape, slices, devices)
  # Auto axes: the logical-rules style of sharding fails type checks under Explicit axes.
  return jax.sharding.Mesh(device_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def hybrid_device_array(shape: Sequence[int], slices: int, devices: Sequence[Any]) -> np.ndarray:
  """Devices arranged as `shape` = (data, fsdp, tensor) with the data axis split over `slices`:
  rows [k * data/slices, (k+1) * data/slices) of the data axis are the devices of slice k.

  What a slice is, in order of preference:
    - multi-slice TPU: devices carry `slice_index`; there must be exactly `slices` of them;
    - elsewhere (GPU nodes, CPU processes), with exactly `slices` processes: one process each;
    - otherwise (one process, or several processes per slice): equal consecutive blocks of the
      devices in process order, so a slice holds whole processes when the process count is a
      multiple of `slices`. With one process this is the flat mesh: there is no slower link to
      keep the ICI axes off, and tests on fake CPU devices run the same code path.
  """
  ici_shape = (shape[0] // slices, *shape[1:])
  dcn_shape = (slices, 1, 1)
  slice_ids = {getattr(d, "slice_index", None) for d in devices}
  if None not in slice_ids and len(slice_ids) > 1:
    if len(slice_ids) != slices:
      raise ValueError(f"config.mesh.dcn_data={slices}: the devices are on {len(slice_ids)} slices "
                       f"(device.slice_index); set config.mesh.dcn_data={len(slice_ids)}")
    return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, allow_split_physical_axes=True)
  if len({d.process_index for d in devices}) == slices:
    return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=True,
                                                allow_split_physical_axes=True)
  # Stable: within a process the caller's order is kept, as in the flat mesh.
  by_process = sorted(devices, key=lambda d: d.process_index)
  return np.asarray(by_process).reshape(shape)


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

"""The predictive units by `config.model.cell` name.

Each entry is a `unit.Unit`: the unit module's `layer_groups`, how its
parameters are named in its PyTorch reference and what its layers record
(see unit.py). Adding a unit
is one new module and one line here.
"""
from stau_jax.models import convlstm
from stau_jax.models import e3dlstm
from stau_jax.models import mim
from stau_jax.models import motiongru
from stau_jax.models import predrnn
from stau_jax.models import predrnnpp
from stau_jax.models import predrnnv2
from stau_jax.models import stau
from stau_jax.models import unit

UNITS = {
    **{name: unit.Unit(stau.layer_groups, unit.torch_key,
                       stau.UNUSED_TORCH_KEYS, records=stau.records(name))
       for name in stau.CELLS},
    'convlstm': unit.Unit(convlstm.layer_groups, unit.torch_key,
                          convlstm.UNUSED_TORCH_KEYS,
                          records=convlstm.RECORDS),
    'predrnn': unit.Unit(predrnn.layer_groups, unit.torch_key,
                         records=predrnn.RECORDS),
    'predrnnpp': unit.Unit(predrnnpp.layer_groups, predrnnpp.torch_key,
                           predrnnpp.UNUSED_TORCH_KEYS,
                           records=predrnnpp.RECORDS),
    'mim': unit.Unit(mim.layer_groups, mim.torch_key, mim.UNUSED_TORCH_KEYS,
                     records=mim.RECORDS),
    'e3dlstm': unit.Unit(e3dlstm.layer_groups, e3dlstm.torch_key,
                         e3dlstm.UNUSED_TORCH_KEYS, records=e3dlstm.RECORDS),
    'predrnnv2': unit.Unit(predrnnv2.layer_groups, unit.torch_key,
                           auxiliary_loss=predrnnv2.decoupling_loss,
                           records=predrnn.RECORDS),
    'motiongru': unit.Unit(motiongru.layer_groups, motiongru.torch_key,
                           records=predrnn.RECORDS),
}
CELLS = tuple(UNITS)


def get(name):
  """The `unit.Unit` called `name`; ValueError listing the choices."""
  if name not in UNITS:
    raise ValueError(f'config.model.cell={name!r} is unknown; '
                     f'choose one of {CELLS}.')
  return UNITS[name]

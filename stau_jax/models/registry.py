"""The predictive units by `config.model.cell` name.

Each entry is a unit module's `layer_groups(model, frontend, conv, norm)`
(see unit.py). Adding a unit is one new module and one line here.
"""
from stau_jax.models import stau

UNITS = {
    **{name: stau.layer_groups for name in stau.CELLS},
}
CELLS = tuple(UNITS)


def layer_groups(model, frontend, conv, norm):
  """The layer groups of unit `model.cell`; ValueError listing the choices."""
  if model.cell not in UNITS:
    raise ValueError(f'config.model.cell={model.cell!r} is unknown; '
                     f'choose one of {CELLS}.')
  return UNITS[model.cell](model, frontend, conv, norm)

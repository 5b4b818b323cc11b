"""STAU models: the cell, its variants and the scanned video predictor."""
from stau_jax.models.cell import CELLS, STAUCell
from stau_jax.models.predictor import (STAUPredictor, count_params,
                                       create_model, init_params,
                                       param_shapes, patch_frames,
                                       ring_order, unpatch_frames,
                                       validate_model_config)

"""Video prediction models: the predictor, its front-ends and its units."""
from stau_jax.models.predictor import (INIT_COMPILER_OPTIONS, Predictor,
                                       compute_dtypes,
                                       conv_factory,
                                       count_params, cpu_has_bfloat16,
                                       create_model, init_params,
                                       norm_factory, param_shapes,
                                       patch_frames, precision_name,
                                       predict_with_auxiliary_loss,
                                       predict_with_records,
                                       unpatch_frames, validate_model_config)
from stau_jax.models import stau
from stau_jax.models.registry import CELLS

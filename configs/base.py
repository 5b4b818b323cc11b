"""What every experiment shares; not an experiment itself (no get_config).

`shared_config()`: the STAU settings the paper uses everywhere (64 hidden
channels, 5x5 filters, tau = theta = 5), the reference training protocol
(Adam 1e-3, batch 16, 150,000 steps, scheduled sampling from 1.0 down by 2e-5
per step until step 50,000, then the learning rate x0.9 every 2,000 steps) and
the evaluation and checkpointing fields. Each experiment adds its Table 1
column (model.num_layers, num_downsample, residual) and its data fields.

`real_video_config()`: the shared config plus what the paper's real-video
experiments (configs/kitti.py, towncentre.py, sthsth.py) have in common: 16
STAU layers, gamma = 1 (residual), RGB frames.
"""
import ml_collections


def shared_config():
  """Returns the model, training and evaluation fields of every experiment."""
  config = ml_collections.ConfigDict()

  config.model = model = ml_collections.ConfigDict()
  # The predictive unit (stau_jax/models/registry.py): stau | mau | stau_no_tam |
  # stau_s_not_t | stau_t_not_s | stau_independent, or a comparison unit:
  # convlstm | predrnn | predrnnpp | mim | e3dlstm | predrnnv2 | motiongru
  model.cell = 'stau'
  model.num_hidden = 64
  model.filter_size = 5
  model.tau = 5
  model.theta = 5
  model.patch_size = 1
  model.recall = False
  model.frontend = 'stau'  # stau (the paper's encoder/decoder) | patch (OpenSTL: patched frames in, 1x1 conv out; needs num_downsample=0)
  model.layer_norm = False  # LayerNorm in the comparison units' convs (OpenSTL's layer_norm); STAU always has it
  model.decouple_beta = 0.1  # weight of PredRNN-v2's memory decoupling loss in training (predrnnv2 only; OpenSTL's 0.1)
  model.conv_impl = 'auto'  # auto | xla | fast | resample | onednn: convolution lowering (stau_jax/ops.py); auto = onednn on CPU (fast where not built)
  model.layer_loop = 'auto'  # auto | scan | unrolled | per_layer: the compiled loop over layers; auto = per_layer on CPU, unrolled elsewhere
  model.remat = 'auto'  # auto | none | cells: recompute cells' elementwise work in the backward (less memory); auto = cells on CPU

  # Fields every dataset reads; each experiment adds dataset, image_size,
  # channels, input_length, total_length and its own fields.
  config.data = data = ml_collections.ConfigDict()
  data.data_dir = ''  # where the dataset's files are (Moving MNIST: TFDS's)
  data.test_total_length = 0  # frames per test sequence; 0: total_length
  data.center_crop = True  # real videos: crop to image_size's aspect before resizing

  config.seed = 0
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_train_steps = 150_000
  config.learning_rate = 1e-3
  config.lr_decay_rate = 0.9
  config.lr_decay_every_steps = 2000
  config.lr_decay_start_step = 50_000
  config.sampling_start_value = 1.0
  config.sampling_changing_rate = 2e-5
  config.sampling_stop_step = 50_000
  # Reverse scheduled sampling (PredRNN-v2; off in the paper): input frames
  # are true with probability rising 0.5 -> 1, future ones falling 0.5 -> 0,
  # between r_sampling_step_1 and r_sampling_step_2 (stau_jax/sampling.py).
  config.reverse_scheduled_sampling = False
  config.r_sampling_step_1 = 25_000
  config.r_sampling_step_2 = 50_000
  config.r_exp_alpha = 5000
  config.eval_every_steps = 5000
  config.num_eval_batches = -1  # -1: the whole test set
  # Metrics of each evaluation (stau_jax/metrics.py): mse, mae, psnr, ssim,
  # ssim_dr1 (cheap), lpips (AlexNet; frames >= 31x31), fvd (I3D over the
  # whole test set; >= 9 predicted frames, minutes on a GPU, hours on a CPU).
  config.eval_metrics = 'mse,mae,psnr,ssim,ssim_dr1'
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.log_every_steps = 100
  config.half_precision = False
  return config


def real_video_config():
  """Returns `shared_config()` with the paper's real-video STAU (Table 1)."""
  config = shared_config()
  config.model.num_layers = 16
  config.model.residual = True
  config.data.channels = 3
  return config

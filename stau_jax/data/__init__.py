"""Input pipelines: one registry of datasets, one interface.

`DATASETS` maps config.data.dataset to the module that reads it. Each module
provides

* `validate(config)`: raises ValueError for a bad setting of its fields;
  it may resolve machine-dependent choices in place (Moving MNIST's
  data.digits='auto'), so what is recorded is what was used.
* `train_batches(config, *, seed, num_devices, start_step, process_index,
  process_count, labelled)`: endless, resumable training batches of this
  host, split over its devices.
* `test_set(config, labelled)`: the ordered test set, a `TestSet` carrying
  its source (and seed) for the evaluation files.
* `num_label_classes(config)`, only when the dataset has action labels.
* `test_set_size(config)`, optional: sequences of the test set when the
  config tells, before it is loaded.
* `RESUME_FIELDS`, optional: config.data fields a resumed run must keep.

Adding a dataset is one module, one line here, a config and a test
(docs/datasets.md). The entry points below, used by training, evaluation
and recognition, are the same for every dataset (importable without
TensorFlow):

* `validate_data_config(config, ...)`: the shared checks, then the
  dataset's. The entry points (train.validate_config, evaluate_params) run
  it once, before any work; the functions below trust the config.
* `create_train_iterator(config, ...)`: endless, resumable iterator of
  float32 (num_devices, per_device_batch, T, H, W, C) batches in [0, 1].
* `load_test_set(config)`: the test set opened once per run (a `TestSet`);
  each `TestSet.batches(B)` is one deterministic pass as dicts {'frames':
  float32 (B, T_test, H, W, C), 'valid': bool (B,)}; the last batch is
  zero-padded to B and `valid` marks its real rows. `create_test_iterator`
  is one such pass, for one-off use.
* `create_labelled_train_iterator` and `load_labelled_test_set`: the same
  with action labels, for early action recognition (the datasets with
  `num_label_classes`).
* `test_set_identity(config, test_set, digest, num_sequences)`: what an
  evaluation file records of the sequences it scored.

Moving MNIST is pure numpy (it runs without TensorFlow); the real-video
datasets are tf.data pipelines (video.py).
"""
from stau_jax.data import kitti
from stau_jax.data import moving_mnist
from stau_jax.data import pipeline
from stau_jax.data import sthsth
from stau_jax.data import towncentre
from stau_jax.data import video_folder

DATASETS = {
    'moving_mnist': moving_mnist,
    'kitti': kitti,
    'towncentre': towncentre,
    'sthsth': sthsth,
    'video_folder': video_folder,
}

TestSet = pipeline.TestSet
eval_total_length = pipeline.eval_total_length
new_digest = pipeline.new_digest


def _local_device_count():
  import jax  # pylint: disable=g-import-not-at-top
  return jax.local_device_count()


def dataset_module(config):
  """The registry's module of config.data.dataset (ValueError if unknown)."""
  name = config.data.dataset
  if name not in DATASETS:
    raise ValueError(f'config.data.dataset={name!r} is not one of '
                     f'{tuple(DATASETS)}')
  return DATASETS[name]


def validate_data_config(config, num_devices=None, process_count=1):
  """Raises ValueError naming the bad value and what is expected.

  Checks the dataset name, frame size and sequence lengths, batch
  divisibility by devices and hosts, then the dataset's own fields (input
  files exist, Moving MNIST's digits are resolved). The model's constraints
  on them (patch_size * 2**num_downsample dividing the frame size) are
  `models.validate_model_config`'s.
  """
  module = dataset_module(config)
  data = config.data
  image_size = data.image_size
  if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2 or
      not all(isinstance(x, int) and x > 0 for x in image_size)):
    raise ValueError(f'config.data.image_size={image_size} must be (height, '
                     'width) with positive sizes, e.g. '
                     '--config.data.image_size="(64, 64)"')
  if eval_total_length(config) <= data.input_length:
    raise ValueError(
        f'config.data.test_total_length={eval_total_length(config)} must be '
        f'larger than input_length={data.input_length}')
  num_devices = num_devices or _local_device_count()
  for name in ('batch_size', 'eval_batch_size'):
    validate_batch_size(config, name, num_devices * process_count)
  module.validate(config)


def validate_batch_size(config, name, shards=1):
  """Raises ValueError unless config[name] is a positive integer divisible
  by `shards` (devices of all hosts)."""
  value = config[name]
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f'config.{name}={value!r} must be a positive integer.')
  if value % shards:
    raise ValueError(
        f'config.{name}={value} is not divisible by the {shards} devices '
        f'(num_devices * process_count); use a multiple of {shards}.')


def create_train_iterator(config, *, seed=None, num_devices=None,
                          start_step=0, process_index=0, process_count=1):
  """Endless iterator of training batches, split over local devices.

  Args:
    config: experiment config (see configs/mmnist.py), validated
      (`validate_data_config`).
    seed: stream seed; defaults to config.seed.
    num_devices: local devices; defaults to jax.local_device_count().
    start_step: first batch yielded; the stream from step k equals the
      uninterrupted stream's batches k, k + 1, ... (checkpoint resume).
    process_index: this host's index; each host draws its own shard.
    process_count: number of hosts; config.batch_size is the global batch.

  Returns:
    Iterator of float32 arrays (num_devices, batch_size // (num_devices *
    process_count), T, H, W, C) in [0, 1]; the model patches frames itself.
  """
  return dataset_module(config).train_batches(
      config, seed=config.seed if seed is None else seed,
      num_devices=num_devices or _local_device_count(), start_step=start_step,
      process_index=process_index, process_count=process_count)


def load_test_set(config):
  """The `TestSet` of config's test frames (config validated)."""
  return dataset_module(config).test_set(config)


def create_test_iterator(config, batch_size=None):
  """One pass over `load_test_set(config)`, in batches of batch_size
  (default config.eval_batch_size): {'frames', 'valid'} (`TestSet.batches`).
  """
  return load_test_set(config).batches(batch_size or config.eval_batch_size)


def test_set_size(config):
  """Sequences in config's test set when the config (or a file header)
  tells, else None; for validation, before the set is loaded."""
  size = getattr(dataset_module(config), 'test_set_size', None)
  return size(config) if size else None


def test_set_identity(config, test_set, digest, num_sequences):
  """{'dataset', 'source', 'num_sequences', 'seed', 'digest'} of the
  `num_sequences` sequences of `test_set` a pass with `digest` scored."""
  return test_set.identity(config.data.dataset, digest, num_sequences)


def labelled_datasets():
  """Names of the datasets with action labels."""
  return tuple(name for name, module in DATASETS.items()
               if hasattr(module, 'num_label_classes'))


def num_label_classes(config):
  """Classes of the dataset's action labels (ValueError if it has none)."""
  module = dataset_module(config)
  if not hasattr(module, 'num_label_classes'):
    raise ValueError(f'config.data.dataset={config.data.dataset!r} has no '
                     f'action labels; use one of {labelled_datasets()}')
  return module.num_label_classes(config)


def create_labelled_train_iterator(config, *, num_devices=None, start_step=0,
                                   process_index=0, process_count=1):
  """Endless, resumable training batches with their action labels.

  The config is validated (`validate_data_config`, `num_label_classes`).

  Returns:
    Iterator of {'frames': float32 (num_devices, per_device_batch, T, H, W,
    C) in [0, 1], 'labels': int32 (num_devices, per_device_batch)}.
  """
  return dataset_module(config).train_batches(
      config, seed=config.seed,
      num_devices=num_devices or _local_device_count(), start_step=start_step,
      process_index=process_index, process_count=process_count,
      labelled=True)


def load_labelled_test_set(config):
  """The `TestSet` of config's test frames with their action labels."""
  return dataset_module(config).test_set(config, labelled=True)


def resume_conflict(saved_config, config):
  """Why a run started with `saved_config` cannot resume with `config`'s
  data (a changed `RESUME_FIELDS` field of its dataset), or None."""
  module = DATASETS.get(config.data.dataset)
  for name in getattr(module, 'RESUME_FIELDS', ()):
    saved, current = saved_config.data.get(name), config.data.get(name)
    if saved not in (None, 'auto') and saved != current:
      return (f'the run trained with config.data.{name}={saved!r} and this '
              f'config resolves it to {current!r}; resuming would change its '
              f'training data. Pass --config.data.{name}={saved}, or use '
              'another --workdir')
  return None

r"""Person detection on predicted frames (the paper's Fig. 9).

  python -m stau_jax.detect --export=stau_towncentre.export --data=clips.npy \
      [--detector=opencv_hog | --detector=onnx --detector_weights=yolov5s.onnx] \
      [--threshold=0.8] --output=det.json [--picture=det.png --index=0]

predicts the future frames of every sequence of CLIPS (N, T >= total_length,
H, W[, C]), uint8 or float in [0, 1], runs a person detector on the true
future frames and on the predicted ones, and prints for every future frame
and on average: detections scoring >= --threshold in the truth and in the
prediction, the mean top score, and how many of the truth's detections a
prediction detection matches (IoU >= 0.5, one to one). Writes the numbers as
JSON and a PNG of one sequence with the boxes drawn (truth frames on top,
their predictions below).

Detectors (`pip install -e ".[detect]"`):
* `opencv_hog`: OpenCV's HOG + linear SVM pedestrian detector (pretrained,
  bundled with OpenCV). Scores are SVM margins (0 = decision boundary; a
  clear pedestrian scores about 1 to 3), not probabilities. It slides a 64x128
  window, so frames are resized by --detect_scale first (default: the
  shorter side becomes 256 pixels, e.g. x4 for 64x64 frames); boxes are
  reported in the frame's own pixels.
* `onnx`: a YOLOv5 or YOLOv8 detection model exported to ONNX (e.g.
  `yolov5s.onnx`, trained on COCO, where class 0 is person), run with
  onnxruntime on letterboxed RGB frames; scores are objectness x person
  class probability (YOLOv5) or the person class probability (YOLOv8).
Gray frames are repeated to three channels. Boxes are (x1, y1, x2, y2).
"""
import json
import math
import os

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageDraw

from stau_jax import cli
from stau_jax import errors
from stau_jax import export
from stau_jax import metrics
from stau_jax import outputs
from stau_jax import pictures
from stau_jax import predict

DETECTORS = ('opencv_hog', 'onnx')
MATCH_IOU = 0.5  # a truth detection is matched by a prediction box this close
NMS_IOU = 0.45  # boxes of one frame overlapping more are one detection
MIN_SCORE = 0.01  # YOLO candidates scoring less are dropped before NMS
HOG_WINDOW = (64, 128)  # (width, height) of OpenCV's people detector
YOLO_INPUT_SIZE = 640  # for ONNX models whose input size is not fixed
_INSTALL = 'install it with pip install -e ".[detect]"'


def box_iou(boxes_a, boxes_b):
  """Intersection over union of (A, 4) and (B, 4) (x1, y1, x2, y2) boxes -> (A, B)."""
  a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
  b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
  top_left = np.maximum(a[:, None, :2], b[None, :, :2])
  bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
  intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)

  def area(boxes):
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1)

  union = area(a)[:, None] + area(b)[None, :] - intersection
  return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0)


def nms(boxes, scores, iou_threshold=NMS_IOU):
  """Non-maximum suppression: indices of the kept boxes, best score first.

  A box is dropped when it overlaps a better-scoring kept box by more than
  `iou_threshold`.
  """
  order = np.argsort(-np.asarray(scores), kind='stable')
  keep = []
  while order.size:
    best, order = order[0], order[1:]
    keep.append(best)
    order = order[box_iou(boxes[best], boxes[order])[0] <= iou_threshold]
  return np.asarray(keep, np.int64)


def count_matches(truth_boxes, predicted_boxes, iou_threshold=MATCH_IOU):
  """How many truth boxes a predicted box matches, one to one.

  Truth boxes, in the given order (best score first), each take the unused
  predicted box of highest IoU if that IoU is >= `iou_threshold`.
  """
  iou = box_iou(truth_boxes, predicted_boxes)
  used = np.zeros(iou.shape[1], bool)
  for row in iou:
    candidates = np.where(used, -1.0, row)
    if candidates.size and candidates.max() >= iou_threshold:
      used[np.argmax(candidates)] = True
  return int(used.sum())


def decode_yolo(output, person_class=0, min_score=MIN_SCORE,
                iou_threshold=NMS_IOU):
  """Person boxes from a YOLOv5 or YOLOv8 head's raw output, after NMS.

  Args:
    output: YOLOv5 (1, N, 5 + classes) rows (cx, cy, w, h, objectness, class
      probabilities...), or YOLOv8 (1, 4 + classes, N) columns (cx, cy, w, h,
      class probabilities...); told apart by which axis is longer (N is the
      number of candidate boxes, thousands for real models).
    person_class: index of the person class (0 in COCO).
    min_score: candidates scoring less are dropped.
    iou_threshold: NMS overlap.

  Returns:
    (boxes (K, 4) float32 (x1, y1, x2, y2) in the model input's pixels,
    scores (K,) float32), best first.
  """
  output = np.asarray(output, np.float32)
  if output.ndim != 3 or output.shape[0] != 1:
    raise ValueError(f'A YOLO output must be (1, N, 5 + classes) (YOLOv5) or '
                     f'(1, 4 + classes, N) (YOLOv8); got {output.shape}.')
  output = output[0]
  yolov8 = output.shape[0] < output.shape[1]  # attributes x candidates
  if yolov8:
    output = output.T
  first_class = 4 if yolov8 else 5
  num_classes = output.shape[1] - first_class
  if not 0 <= person_class < num_classes:
    raise ValueError(f'The YOLO output {output.shape} has {num_classes} '
                     f'classes; there is no person class {person_class}.')
  scores = output[:, first_class + person_class]
  if not yolov8:
    scores = scores * output[:, 4]  # objectness
  candidates = scores >= min_score
  centers, sizes = output[candidates, :2], output[candidates, 2:4]
  boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
  keep = nms(boxes, scores[candidates], iou_threshold)
  return boxes[keep], scores[candidates][keep]


def letterbox(image, size):
  """Resizes keeping the aspect ratio and pads with gray (114) to `size`, as YOLO expects.

  Args:
    image: uint8 (H, W, 3).
    size: (height, width) of the model input.

  Returns:
    (uint8 (height, width, 3) image, ratio, (left, top) padding): a point
    (x, y) of the image is at (x ratio + left, y ratio + top).
  """
  cv2 = _import('cv2')
  height, width = image.shape[:2]
  ratio = min(size[0] / height, size[1] / width)
  new_width, new_height = round(width * ratio), round(height * ratio)
  left = (size[1] - new_width) // 2
  top = (size[0] - new_height) // 2
  resized = cv2.resize(image, (new_width, new_height),
                       interpolation=cv2.INTER_LINEAR)
  padded = np.full((size[0], size[1], 3), 114, np.uint8)
  padded[top:top + new_height, left:left + new_width] = resized
  return padded, ratio, (left, top)


def _import(module):
  """Imports an optional detection dependency, saying how to install it."""
  import importlib  # pylint: disable=g-import-not-at-top
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise errors.MissingPackageError(f'Detection needs {module}: {_INSTALL}.') from e


def auto_scale(image_size):
  """Default --detect_scale: the shorter side of a (H, W) frame becomes >= 256 pixels."""
  return max(1.0, 256 / min(image_size))


def resize(image, scale):
  """uint8 (H, W, C) -> (round(H scale), round(W scale), C), bilinear."""
  cv2 = _import('cv2')
  height, width = image.shape[:2]
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
  return resized.reshape(resized.shape[:2] + image.shape[2:])


def hog_detector(scale):
  """OpenCV's HOG pedestrian detector: uint8 (H, W, 3) -> (boxes, scores).

  Frames are resized by `scale` first; boxes come back in the frame's own
  pixels, scores are SVM margins, best first.
  """
  cv2 = _import('cv2')
  if not hasattr(cv2, 'HOGDescriptor'):
    raise errors.MissingPackageError(f'OpenCV {cv2.__version__} has no HOGDescriptor (OpenCV '
                      f'5 removed it); {_INSTALL} (opencv-python-headless<5).')
  hog = cv2.HOGDescriptor()
  hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

  def detect(frame):
    resized = resize(frame, scale)
    height, width = resized.shape[:2]
    if width < HOG_WINDOW[0] or height < HOG_WINDOW[1]:
      # OpenCV crashes (not raises) on images smaller than the window.
      raise ValueError(
          f'Frames of {frame.shape[1]}x{frame.shape[0]} pixels resized by '
          f'--detect_scale={scale:g} are {width}x{height}, smaller than the '
          f'HOG window {HOG_WINDOW[0]}x{HOG_WINDOW[1]}; use a larger '
          f'--detect_scale.')
    rects, weights = hog.detectMultiScale(resized, winStride=(8, 8),
                                          padding=(8, 8), scale=1.05)
    rects = np.asarray(rects, np.float32).reshape(-1, 4)
    scores = np.asarray(weights, np.float32).reshape(-1)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1)
    boxes /= np.array([width / frame.shape[1], height / frame.shape[0]] * 2,
                      np.float32)
    keep = nms(boxes, scores)
    return boxes[keep], scores[keep]

  return detect


def onnx_detector(weights, person_class=0):
  """A YOLOv5/YOLOv8 ONNX model: uint8 (H, W, 3) -> (boxes, scores).

  The model is run once on a blank frame here, so a file that is not a YOLO
  detection model fails before any prediction work.
  """
  if not weights:
    raise ValueError('--detector=onnx needs --detector_weights=MODEL.onnx, a '
                     'YOLOv5 or YOLOv8 model exported to ONNX.')
  if not os.path.isfile(weights):
    raise FileNotFoundError(
        f'ONNX model {weights!r} {errors.not_a_file(weights)}; pass '
        f'--detector_weights= the '
        f'path of a YOLOv5 or YOLOv8 model exported to ONNX.')
  onnxruntime = _import('onnxruntime')
  try:
    session = onnxruntime.InferenceSession(
        weights, providers=onnxruntime.get_available_providers())
  except Exception as e:  # onnxruntime raises its own unrelated types.
    raise ValueError(f'{weights!r} is not a readable ONNX model ({e}); pass '
                     f'a YOLOv5 or YOLOv8 model exported to ONNX.') from e
  model_input = session.get_inputs()[0]
  shape = model_input.shape
  if len(session.get_inputs()) != 1 or len(shape) != 4 or shape[1] != 3:
    raise ValueError(f'{weights!r} takes {len(session.get_inputs())} inputs, '
                     f'the first of shape {shape}; a YOLO model takes one (1, '
                     f'3, height, width) image.')
  size = tuple(d if isinstance(d, int) else YOLO_INPUT_SIZE for d in shape[2:])
  dtype = np.float16 if model_input.type == 'tensor(float16)' else np.float32

  def detect(frame):
    image, ratio, (left, top) = letterbox(frame, size)
    blob = np.ascontiguousarray(image.transpose(2, 0, 1)[None]) / 255
    output = session.run(None, {model_input.name: blob.astype(dtype)})[0]
    boxes, scores = decode_yolo(output, person_class)
    boxes = (boxes - np.array([left, top, left, top], np.float32)) / ratio
    height, width = frame.shape[:2]
    return np.clip(boxes, 0, np.array([width, height] * 2, np.float32)), scores

  try:
    detect(np.zeros((size[0], size[1], 3), np.uint8))
  except Exception as e:  # a bad output shape, or onnxruntime failing
    raise ValueError(f'{weights!r} is not a YOLOv5/YOLOv8 detection model: '
                     f'{e}') from e
  return detect


def create_detector(name, weights='', scale=1.0, person_class=0):
  """The detector `name` (see DETECTORS): uint8 (H, W, 3) -> (boxes, scores).

  `scale` resizes frames for `opencv_hog`; `weights` and `person_class` are
  the `onnx` model file and its person class.
  """
  if name == 'opencv_hog':
    return hog_detector(scale)
  if name == 'onnx':
    return onnx_detector(weights, person_class)
  raise ValueError(f'Unknown detector {name!r}; choose one of {DETECTORS}.')


def to_rgb(frames):
  """Frames (..., H, W, 1 or 3) in [0, 1] -> uint8 (..., H, W, 3)."""
  frames = pictures.to_uint8(frames)
  return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def detect_frames(detector, frames):
  """Runs `detector` on (N, T, H, W, C) frames in [0, 1] -> [N][T] (boxes, scores)."""
  return [[detector(frame) for frame in to_rgb(sequence)]
          for sequence in frames]


def detection_stats(truth, predicted, threshold, iou_threshold=MATCH_IOU):
  """Compares detections on true and predicted future frames.

  Args:
    truth: [N][T] (boxes (K, 4), scores (K,)) on the true frames, best first.
    predicted: the same on the predicted frames.
    threshold: detections scoring less are not counted or matched.
    iou_threshold: IoU at which a predicted box matches a true one.

  Returns:
    {'per_frame': {name: T values}, 'mean': {name: value}} with names
    truth_dets, pred_dets (detections >= threshold per frame), truth_top,
    pred_top (top score of a frame, 0 without detections), matched (truth
    detections matched in the prediction), each averaged over sequences
    (and over frames in 'mean'), and match_rate = all matched / all truth
    detections (of the frame, or of all frames in 'mean'; NaN if none).
  """
  def summarize(detections):
    above = [[boxes[scores >= threshold] for boxes, scores in sequence]
             for sequence in detections]
    top = np.array([[scores.max(initial=0) for _, scores in sequence]
                    for sequence in detections], np.float64)
    return above, np.array([[len(b) for b in s] for s in above]), top

  truth_boxes, truth_count, truth_top = summarize(truth)
  predicted_boxes, predicted_count, predicted_top = summarize(predicted)
  matched = np.array([[count_matches(t, p, iou_threshold) for t, p in zip(*s)]
                      for s in zip(truth_boxes, predicted_boxes)], np.float64)
  counts = {'truth_dets': truth_count, 'pred_dets': predicted_count,
            'truth_top': truth_top, 'pred_top': predicted_top,
            'matched': matched}
  per_frame = {name: value.mean(0).tolist() for name, value in counts.items()}
  mean = {name: float(value.mean()) for name, value in counts.items()}

  def rate(matches, total):
    return float(matches / total) if total else math.nan

  per_frame['match_rate'] = [rate(m, t) for m, t in
                             zip(matched.sum(0), truth_count.sum(0))]
  mean['match_rate'] = rate(matched.sum(), truth_count.sum())
  return {'per_frame': per_frame, 'mean': mean}


def draw_boxes(image, boxes, scores, color=(0, 255, 0)):
  """Draws boxes with their scores on a copy of a uint8 (H, W, 3) image."""
  picture = Image.fromarray(image)
  draw = ImageDraw.Draw(picture)
  for box, score in zip(boxes, scores):
    draw.rectangle([float(c) for c in box], outline=color, width=2)
    draw.text((float(box[0]) + 2, float(box[1]) + 1), f'{score:.2f}',
              fill=color)
  return np.asarray(picture)


def detection_strip(inputs, truth, prediction, truth_detections,
                    predicted_detections, threshold, scale):
  """One sequence with its detections: inputs then truth on top, predictions below.

  Args:
    inputs: (T_in, H, W, C) observed frames in [0, 1].
    truth: (T_out, H, W, C) true future frames in [0, 1].
    prediction: (T_out, H, W, C) predicted future frames.
    truth_detections: T_out (boxes, scores) on `truth`.
    predicted_detections: T_out (boxes, scores) on `prediction`.
    threshold: only detections scoring >= threshold are drawn.
    scale: frames are resized by this factor (boxes with them).

  Returns:
    uint8 RGB image (`pictures.sequence_strip` layout).
  """
  def boxed(frames, detections):
    return np.stack([
        draw_boxes(resize(frame, scale), boxes[scores >= threshold] * scale,
                   scores[scores >= threshold])
        for frame, (boxes, scores) in zip(to_rgb(frames), detections)])

  inputs = np.stack([resize(frame, scale) for frame in to_rgb(inputs)])
  truth = boxed(truth, truth_detections)
  return pictures.sequence_strip(
      np.concatenate([inputs, truth]) / 255,
      boxed(prediction, predicted_detections) / 255, len(inputs))


def detect_on_predictions(params, config, clips, detector, batch_size=16):
  """Predicts every sequence's future and detects on it and on the truth.

  Args:
    params: model parameters (e.g. from `export.load_export`).
    config: their experiment config.
    clips: (N, T >= total_length, H, W[, C]) uint8 or float in [0, 1].
    detector: from `create_detector`.
    batch_size: sequences per prediction call.

  Returns:
    {'frames': (N, total_length, H, W, C) float32, 'predictions': (N, T_out,
    H, W, C), 'truth_detections', 'predicted_detections': [N][T_out] (boxes,
    scores)}.
  """
  frames = predict.prepare_inputs(clips, config, with_truth=True)
  input_length = config.data.input_length
  predictions = predict.predict(params, config, frames[:, :input_length],
                                batch_size)
  return {'frames': frames, 'predictions': predictions,
          'truth_detections': detect_frames(detector, frames[:, input_length:]),
          'predicted_detections': detect_frames(detector, predictions)}


FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI flags (only when run as a program)."""
  flags.DEFINE_string('export', None, 'Export file (stau_jax.export).')
  flags.DEFINE_string('data', None, '.npy of sequences (N, T, H, W[, C]), '
                      'uint8 or float in [0, 1], T >= total_length.')
  flags.DEFINE_enum('detector', 'opencv_hog', DETECTORS, 'Person detector.')
  flags.DEFINE_string('detector_weights', '',
                      'YOLOv5/YOLOv8 .onnx model for --detector=onnx.')
  flags.DEFINE_integer('person_class', 0,
                       'Person class of the ONNX model (0 in COCO).')
  flags.DEFINE_float('threshold', 0.8, 'Detections scoring less are ignored.')
  flags.register_validator('threshold', math.isfinite,
                           message='--threshold must be a finite number')
  flags.DEFINE_float('detect_scale', 0, 'Resize frames by this for HOG and '
                     'the picture; 0: the shorter side becomes >= 256 pixels.',
                     lower_bound=0)
  flags.register_validator('detect_scale', math.isfinite,
                           message='--detect_scale must be a finite number')
  flags.DEFINE_string('output', None, 'Write the numbers as JSON here.')
  flags.DEFINE_string('picture', '', 'PNG of one sequence with its boxes; '
                      'default: --output with .png.')
  flags.DEFINE_integer('index', 0, 'Sequence drawn in the picture.')
  flags.DEFINE_integer('batch_size', 16, 'Sequences per prediction call.',
                       lower_bound=1)
  flags.mark_flags_as_required(['export', 'data', 'output'])


def load_clips(path, index):
  """Memory-maps a clips .npy, checking that sequence `index` exists."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Clips file {path!r} {errors.not_a_file(path)}; pass '
                            '--data= a .npy of (N, T, H, W[, C]) sequences.')
  clips = predict.load_frames(path)
  if not 0 <= index < len(clips):
    raise ValueError(f'--index={index} is outside the {len(clips)} sequences '
                     f'of {path}.')
  return clips


def write_json(path, result, **settings):
  """Writes `detection_stats` output and the settings; NaN becomes null."""
  def finite(value):
    if isinstance(value, list):
      return [finite(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value

  report = dict(settings, **{part: {name: finite(value) for name, value in
                                    result[part].items()}
                             for part in ('per_frame', 'mean')})
  outputs.write_text(path, json.dumps(report, indent=2))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.detector != 'onnx':
    cli.refuse_given(('detector_weights', 'person_class'),
                     'with --detector=onnx')
  picture = FLAGS.picture or os.path.splitext(FLAGS.output)[0] + '.png'
  outputs.check_output_paths(
      suffixes={'picture': ('.png',)},
      inputs={'export': FLAGS.export, 'data': FLAGS.data,
              'detector_weights': FLAGS.detector_weights},
      output=FLAGS.output, picture=picture)
  params, config = export.load_export(FLAGS.export)
  scale = FLAGS.detect_scale or auto_scale(config.data.image_size)
  detector = create_detector(FLAGS.detector, FLAGS.detector_weights, scale,
                             FLAGS.person_class)
  # Frames the detector cannot take fail now, not after the predictions.
  detector(np.zeros(tuple(config.data.image_size) + (3,), np.uint8))
  clips = load_clips(FLAGS.data, FLAGS.index)
  detected = detect_on_predictions(params, config, clips, detector,
                                   FLAGS.batch_size)
  result = detection_stats(detected['truth_detections'],
                           detected['predicted_detections'], FLAGS.threshold)
  print(f'{FLAGS.detector} on the future frames of {len(clips)} sequences '
        f'(threshold {FLAGS.threshold:g}):')
  print(metrics.format_table(result))
  write_json(FLAGS.output, result, export=FLAGS.export, data=FLAGS.data,
             detector=FLAGS.detector, detector_weights=FLAGS.detector_weights,
             threshold=FLAGS.threshold, match_iou=MATCH_IOU,
             detect_scale=scale, num_sequences=len(clips))
  frames, i = detected['frames'][FLAGS.index], FLAGS.index
  input_length = config.data.input_length
  pictures.save_png(picture, detection_strip(
      frames[:input_length], frames[input_length:], detected['predictions'][i],
      detected['truth_detections'][i], detected['predicted_detections'][i],
      FLAGS.threshold, scale))
  print(f'Wrote {FLAGS.output} and {picture}.')


if __name__ == '__main__':
  cli.run(main, define_flags)

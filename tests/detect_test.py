"""Tests of person detection on predictions: boxes, YOLO decoding, HOG, the CLI."""
import json
import os

import jax
import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper
import pytest
from PIL import Image

from configs import tiny
from stau_jax import detect
from stau_jax import export
from stau_jax import models
from stau_jax import predict
from tests import runs
from tools import walking_people


def _yolo_model(path, output, input_size=(64, 64), score_weights=None):
  """Writes an ONNX model whose output is the constant `output`.

  With `score_weights` (output's shape) the output is output + score_weights
  x the mean of the input image, so scores show what the model was fed.
  """
  output = np.asarray(output, np.float32)
  weights = np.zeros_like(output) if score_weights is None else score_weights
  nodes = [
      helper.make_node('Constant', [], ['raw'],
                       value=numpy_helper.from_array(output)),
      helper.make_node('Constant', [], ['weights'],
                       value=numpy_helper.from_array(
                           np.asarray(weights, np.float32))),
      helper.make_node('Constant', [], ['shape'],
                       value=numpy_helper.from_array(
                           np.ones(output.ndim, np.int64))),
      helper.make_node('ReduceMean', ['images'], ['mean'], keepdims=1),
      helper.make_node('Reshape', ['mean', 'shape'], ['mean_1s']),
      helper.make_node('Mul', ['weights', 'mean_1s'], ['weighted']),
      helper.make_node('Add', ['raw', 'weighted'], ['output0']),
  ]
  graph = helper.make_graph(
      nodes, 'yolo_stub',
      [helper.make_tensor_value_info('images', onnx.TensorProto.FLOAT,
                                     [1, 3, *input_size])],
      [helper.make_tensor_value_info('output0', onnx.TensorProto.FLOAT,
                                     list(output.shape))])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
  model.ir_version = 8
  onnx.checker.check_model(model)
  onnx.save(model, str(path))
  return str(path)


# YOLOv5 rows (cx, cy, w, h, objectness, person, car) in the 64x64 model
# input; the frames below are 16x32 (H, W), letterboxed at ratio 2 with 16
# gray rows on top.
_ROWS = np.array([
    [32, 32, 20, 30, 0.9, 0.95, 0.0],  # person: 0.855
    [33, 32, 20, 30, 0.8, 0.9, 0.0],   # same person, worse: suppressed
    [10, 40, 8, 12, 0.0, 1.0, 0.0],    # score from the input (below)
    [50, 24, 6, 6, 0.9, 0.005, 0.9],   # a car
    [50, 40, 6, 6, 0.1, 0.05, 0.0],    # 0.005: below MIN_SCORE
] + [[0] * 7] * 3, np.float32)
_MEAN_WEIGHT = np.zeros_like(_ROWS)
_MEAN_WEIGHT[2, 4] = 1.0  # objectness = mean of the fed image
# A white 16x32 frame letterboxed: half white, half gray 114, over 255.
_WHITE_MEAN = (255 + 114) / 2 / 255
_EXPECTED_BOXES = np.array([[11, 0.5, 21, 15.5], [3, 9, 7, 15]], np.float32)
_EXPECTED_SCORES = np.array([0.855, _WHITE_MEAN], np.float32)


@pytest.mark.parametrize('layout', ['yolov5', 'yolov8'])
def test_onnx_detector_decodes_letterboxes_and_suppresses(tmp_path, layout):
  rows, weights = _ROWS[None], _MEAN_WEIGHT[None]
  if layout == 'yolov8':  # no objectness; scores are the class columns
    scores = rows[..., 4:5] * rows[..., 5:]
    rows = np.concatenate([rows[..., :4], scores], -1).transpose(0, 2, 1)
    weights = np.zeros_like(rows)
    rows[0, 4, 2] = 0  # the input-dependent person score
    weights[0, 4, 2] = 1.0
  detector = detect.create_detector(
      'onnx', _yolo_model(tmp_path / 'm.onnx', rows, score_weights=weights))
  boxes, scores = detector(np.full((16, 32, 3), 255, np.uint8))
  np.testing.assert_allclose(boxes, _EXPECTED_BOXES, atol=1e-4)
  np.testing.assert_allclose(scores, _EXPECTED_SCORES, atol=1e-4)


def test_decode_yolo_person_class_and_bad_shapes():
  boxes, scores = detect.decode_yolo(_ROWS[None], person_class=1)
  np.testing.assert_allclose(scores, [0.81], atol=1e-6)  # the car
  np.testing.assert_allclose(boxes, [[47, 21, 53, 27]])
  with pytest.raises(ValueError, match='no person class 2'):
    detect.decode_yolo(_ROWS[None], person_class=2)
  with pytest.raises(ValueError, match=r'\(1, 4 \+ classes, N\)'):
    detect.decode_yolo(_ROWS)


def test_onnx_detector_errors_name_the_file(tmp_path):
  missing = str(tmp_path / 'yolov5s.onnx')
  with pytest.raises(FileNotFoundError, match='yolov5s.onnx.*does not exist'):
    detect.create_detector('onnx', missing)
  with pytest.raises(FileNotFoundError, match='is a directory'):
    detect.create_detector('onnx', str(tmp_path))
  with pytest.raises(ValueError, match='needs --detector_weights'):
    detect.create_detector('onnx', '')
  (tmp_path / 'garbage.onnx').write_bytes(b'not a model at all')
  with pytest.raises(ValueError, match='garbage.onnx.*not a readable ONNX'):
    detect.create_detector('onnx', str(tmp_path / 'garbage.onnx'))
  not_yolo = _yolo_model(tmp_path / 'classifier.onnx', np.zeros((1, 10)))
  with pytest.raises(ValueError, match='classifier.onnx.*not a YOLOv5/YOLOv8'):
    detect.create_detector('onnx', not_yolo)
  with pytest.raises(ValueError, match='Unknown detector'):
    detect.create_detector('yolo')


def test_missing_clips_or_sequence_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='clips.npy.*does not exist'):
    detect.load_clips(str(tmp_path / 'clips.npy'), 0)
  with pytest.raises(FileNotFoundError, match='is a directory'):
    detect.load_clips(str(tmp_path), 0)
  open(tmp_path / 'empty.npy', 'wb').close()
  with pytest.raises(ValueError, match='Cannot read the frames: No data left '
                     r'in file \(.*empty.npy\)'):
    detect.load_clips(str(tmp_path / 'empty.npy'), 0)
  np.save(tmp_path / 'clips.npy', np.zeros((2, 8, 16, 16), np.uint8))
  assert detect.load_clips(str(tmp_path / 'clips.npy'), 1).shape[0] == 2
  with pytest.raises(ValueError, match='--index=2 is outside the 2'):
    detect.load_clips(str(tmp_path / 'clips.npy'), 2)


def test_box_iou_against_hand_computed_values():
  iou = detect.box_iou([[0, 0, 10, 10], [0, 0, 2, 2]],
                       [[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30]])
  np.testing.assert_allclose(iou, [[25 / 175, 1, 0], [0, 0.04, 0]])
  assert detect.box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def test_nms_keeps_the_best_of_overlapping_boxes():
  boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10],
                    [0, 0, 10, 14]], np.float32)
  # Box 1 suppresses 0 (IoU 90/110) and 3 (IoU 90/150 > 0.45).
  keep = detect.nms(boxes, np.array([0.5, 0.9, 0.7, 0.1]))
  np.testing.assert_array_equal(keep, [1, 2])
  assert detect.nms(np.zeros((0, 4)), np.zeros(0)).size == 0


def test_matches_are_one_to_one_at_iou_one_half():
  truth = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]])
  assert detect.count_matches(truth, [[0, 0, 10, 10]]) == 1  # used once
  assert detect.count_matches(truth, [[0, 0, 10, 10], [1, 0, 11, 10]]) == 2
  assert detect.count_matches(truth[:1], [[0, 0, 10, 20]]) == 1  # IoU 0.5
  assert detect.count_matches(truth[:1], [[0, 0, 10, 21]]) == 0  # IoU < 0.5
  assert detect.count_matches(truth, np.zeros((0, 4))) == 0


def _detections(*frames):
  return [(np.array(boxes, np.float32).reshape(-1, 4),
           np.array(scores, np.float32)) for boxes, scores in frames]


def test_detection_stats_on_hand_made_boxes():
  a, b, far = [0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 60, 60]
  truth = [  # two sequences, two future frames
      _detections(([a, b], [0.9, 0.85]), ([a], [0.95])),
      _detections(([a, b], [0.9, 0.5]), ([], [])),
  ]
  predicted = [
      _detections(([a, far], [0.9, 0.8]), ([a], [0.7])),
      _detections(([b], [0.99]), ([a], [0.9])),
  ]
  result = detect.detection_stats(truth, predicted, threshold=0.8)
  per_frame, mean = result['per_frame'], result['mean']
  # Frame 1: truth 2 and 1 detections >= 0.8 (b's 0.5 is below), prediction
  # 2 and 1; matched: a (seq 0), none (seq 1: truth b is below threshold).
  assert per_frame['truth_dets'] == [1.5, 0.5]
  assert per_frame['pred_dets'] == [1.5, 0.5]
  np.testing.assert_allclose(per_frame['truth_top'], [0.9, 0.475], rtol=1e-6)
  np.testing.assert_allclose(per_frame['pred_top'], [0.945, 0.8], rtol=1e-6)
  assert per_frame['matched'] == [0.5, 0.0]  # frame 2: prediction a is 0.7
  np.testing.assert_allclose(per_frame['match_rate'], [1 / 3, 0])
  assert mean['truth_dets'] == 1.0 and mean['matched'] == 0.25
  np.testing.assert_allclose(mean['match_rate'], 1 / 4)
  nothing = detect.detection_stats(truth, predicted, threshold=1.0)
  assert np.isnan(nothing['mean']['match_rate'])


def test_hog_finds_a_drawn_pedestrian_on_a_small_frame():
  person = walking_people.Person(x=32, feet=50, height=40, speed=0,
                                 color=(40, 40, 40))
  frames = np.stack([walking_people.render([person], 64),
                     walking_people.render([], 64)])[None] / 255
  scale = detect.auto_scale((64, 64))
  assert scale == 4
  (found, empty), = detect.detect_frames(detect.hog_detector(scale), frames)
  boxes, scores = found
  assert len(boxes) == 1 and scores[0] > 1.0, (boxes, scores)
  # HOG's window around a person H tall is 128/96 H tall, 64/96 H wide; the
  # figure is 40 pixels tall, centered at (32, 30).
  window = [32 - 40 / 3, 30 - 80 / 3, 32 + 40 / 3, 30 + 80 / 3]
  assert detect.box_iou(boxes, window)[0, 0] >= 0.8, boxes
  assert len(empty[0]) == 0
  with pytest.raises(ValueError, match='larger --detect_scale'):
    detect.hog_detector(1.0)(np.zeros((64, 64, 3), np.uint8))


def test_detection_strip_draws_boxes_above_the_threshold():
  frames = np.zeros((4, 8, 8, 1), np.float32)
  truth = _detections(([[1, 1, 6, 6]], [0.9]), ([[1, 1, 6, 6]], [0.5]))
  predicted = _detections(([], []), ([], []))
  strip = detect.detection_strip(frames[:2], frames[2:], frames[2:], truth,
                                 predicted, threshold=0.8, scale=4)
  assert strip.shape == (2 * 32 + 2, 4 * 34 - 2, 3)
  green = (strip[..., 1] == 255) & (strip[..., 0] == 0)
  truth_1, truth_2 = green[:32, 68:100], green[:32, 102:134]
  assert truth_1[4, 4:24].all() and not truth_2.any()
  assert not green[34:].any() and not green[:, :66].any()


def test_with_truth_inputs_keep_total_length_frames():
  config = tiny.get_config()
  clips = np.zeros((2, 9, 16, 16), np.uint8)
  assert predict.prepare_inputs(clips, config, with_truth=True).shape == (
      2, 8, 16, 16, 1)
  with pytest.raises(ValueError, match='at least total_length=8'):
    predict.prepare_inputs(clips[:, :6], config, with_truth=True)


def test_cli_reports_matches_and_writes_json_and_picture(tmp_path):
  config = tiny.get_config()
  params = models.init_params(models.create_model(config), config,
                              jax.random.PRNGKey(0))
  export.save_export(str(tmp_path / 'tiny.export'), params, config)
  clips = np.random.default_rng(0).integers(0, 256, (3, 8, 16, 16), np.uint8)
  np.save(tmp_path / 'clips.npy', clips)
  # A model finding the same two people in every frame, one below 0.8.
  rows = np.zeros((1, 8, 6), np.float32)
  rows[0, :2] = [[20, 20, 10, 20, 1, 0.9], [50, 40, 10, 20, 1, 0.6]]
  model = _yolo_model(tmp_path / 'people.onnx', rows)
  result = runs.python(
      '-m', 'stau_jax.detect', f'--export={tmp_path / "tiny.export"}',
      f'--data={tmp_path / "clips.npy"}', '--detector=onnx',
      f'--detector_weights={model}', f'--output={tmp_path / "det.json"}',
      '--index=2')
  assert 'match_rate' in result.stdout
  report = json.loads((tmp_path / 'det.json').read_text())
  assert report['num_sequences'] == 3 and report['detect_scale'] == 16
  for name in ('truth_dets', 'pred_dets', 'matched', 'match_rate'):
    assert report['per_frame'][name] == [1.0] * 4, name
  np.testing.assert_allclose(report['mean']['pred_top'], 0.9, atol=1e-6)
  picture = np.asarray(Image.open(tmp_path / 'det.png'))
  assert picture.shape == (2 * 256 + 2, 8 * 258 - 2, 3)


@pytest.mark.parametrize('flags, message', [
    (['--output=det.png'], 'error: --output and --picture name the same file '
     '(det.png): give each output its own path'),
    (['--output=det.json', '--picture=det.jpg'],
     'error: --picture=det.jpg must end with .png: change the file name'),
    (['--output=clips.npy'], 'error: --output=clips.npy would overwrite the '
     'input --data: write the output to another file'),
])
def test_cli_refuses_colliding_outputs_before_reading_the_export(
    tmp_path, flags, message):
  result = runs.python('-m', 'stau_jax.detect', '--export=missing.export',
                       '--data=clips.npy', *flags, cwd=tmp_path, check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == message
  assert os.listdir(tmp_path) == []


def test_cli_on_a_full_disk_keeps_the_old_report(tmp_path):
  config = tiny.get_config()
  params = models.init_params(models.create_model(config), config,
                              jax.random.PRNGKey(0))
  export.save_export(str(tmp_path / 'tiny.export'), params, config)
  np.save(tmp_path / 'clips.npy', np.zeros((1, 8, 16, 16), np.uint8))
  (tmp_path / 'det.json').write_text('{"old": 1}')
  result = runs.python_on_full_disk(
      'stau_jax.detect', f'--export={tmp_path / "tiny.export"}',
      f'--data={tmp_path / "clips.npy"}', f'--output={tmp_path / "det.json"}')
  runs.assert_full_disk_error(result, str(tmp_path / 'det.json'), tmp_path,
                              b'{"old": 1}')
  assert not (tmp_path / 'det.png').exists()

"""Generate the training-trajectory vector (stau_trajectory.npz) from the
authors' PyTorch model.

Builds the authors' ``core.models.STAU.RNN`` (a small case, perturbed as in
make_reference_vectors.py), then trains copies of it for STEPS Adam steps
(lr 1e-3, PyTorch defaults) on fixed random batches with the authors' loss
(``nn.MSELoss()(next_frames, frames[:, 1:])``, core/models/model_factory.py),
once with teacher forcing (the sampling mask all ones: every input is the true
frame) and once free running (all zeros: the model's own predictions are fed
back). Stores the initial weights, the batches, the loss before each step
and the final weights of each run.

Usage (from the repository root, with torch installed):
    python tests/vectors/make_trajectory_vector.py PATH_TO_STAU_CHECKOUT [OUT_DIR]

Keys: ``frames`` (STEPS, B, T, H, W, c) in [0, 1]; ``config_json`` (as the
forward vectors); ``state_dict/<key>`` the initial weights; for each mode
``teacher_forcing`` and ``free_running``: ``<mode>/losses`` (STEPS,) and
``<mode>/state_dict/<key>`` the weights after the last step.
"""
import copy
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference_vectors as reference  # noqa: E402

B = 2
STEPS = 5
LEARNING_RATE = 1e-3
CASE = dict(name="stau_trajectory", model_name="stau", cell_mode="normal",
            model_mode="normal", patch_size=1, img_channel=1, img_height=16,
            img_width=24, sr_size=4, num_layers=2, hidden=4, tau=2, k=5,
            total_length=6, input_length=3, mask=False)
MODES = {"teacher_forcing": 1.0, "free_running": 0.0}


def train(torch, net, inputs, mask_value):
    """Trains `net` in place; returns the loss before each step."""
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    criterion = torch.nn.MSELoss()
    t, t_in = CASE["total_length"], CASE["input_length"]
    h, w = CASE["img_height"], CASE["img_width"]
    mask = torch.full((B, t - t_in - 1, h, w, 1), mask_value)
    losses = []
    net.train()
    for frames in inputs:
        optimizer.zero_grad()
        predictions = net(frames, mask)
        loss = criterion(predictions, frames[:, 1:])
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return np.array(losses, np.float32)


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    out_dir = argv[2] if len(argv) > 2 else os.path.dirname(os.path.abspath(__file__))
    import torch
    torch.set_num_threads(1)
    networks = reference.import_reference(argv[1])
    torch.manual_seed(2000)
    cfg = reference.make_config(CASE)
    net = networks["stau"](CASE["num_layers"], [CASE["hidden"]] * CASE["num_layers"], cfg)
    reference.perturb(torch, net)
    rng = np.random.RandomState(2000)
    frames = rng.rand(STEPS, B, CASE["total_length"], CASE["img_height"],
                      CASE["img_width"], 1).astype(np.float32)
    inputs = [torch.from_numpy(np.ascontiguousarray(f.transpose(0, 1, 4, 2, 3)))
              for f in frames]
    config = dict(vars(cfg))
    config["filter_size"] = list(cfg.filter_size)
    config.update(model_name="stau", num_layers=CASE["num_layers"],
                  num_hidden=[CASE["hidden"]] * CASE["num_layers"],
                  learning_rate=LEARNING_RATE)
    arrays = {"frames": frames, "config_json": np.array(json.dumps(config, sort_keys=True))}
    for key, value in net.state_dict().items():
        arrays["state_dict/" + key] = value.numpy().astype(np.float32)
    for mode, mask_value in MODES.items():
        trained = copy.deepcopy(net)
        arrays[mode + "/losses"] = train(torch, trained, inputs, mask_value)
        for key, value in trained.state_dict().items():
            arrays[f"{mode}/state_dict/{key}"] = value.numpy().astype(np.float32)
        print(mode, "losses", arrays[mode + "/losses"])
    path = os.path.join(out_dir, CASE["name"] + ".npz")
    np.savez_compressed(path, **arrays)
    print(path, os.path.getsize(path), "bytes; torch", torch.__version__)


if __name__ == "__main__":
    main(sys.argv)

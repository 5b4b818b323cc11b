"""Generate reference test vectors for stau_jax from the authors' PyTorch model.

For each small case below this script builds the authors' ``RNN`` (``core.models.STAU``
or ``core.models.MAU``) from a checkout of ZhengChang467/STAU, perturbs every LayerNorm
affine parameter and every conv / transposed-conv bias away from its default, feeds
random frames through it (in the patched, channels-first layout the reference trainer
uses) and stores the inputs, the un-patched outputs, the config and the full
``state_dict`` in one ``.npz`` per case.

The committed vectors were generated from ZhengChang467/STAU with torch 2.13 CPU.

Usage:
    python tests/vectors/make_reference_vectors.py PATH_TO_STAU_CHECKOUT [OUT_DIR]

OUT_DIR defaults to the directory holding this script (tests/vectors).
This script does not depend on stau_jax; it only needs torch and numpy.
"""

import json
import os
import sys
import types

import numpy as np

B = 2

CASES = [
    dict(name="stau_basic", model_name="stau", cell_mode="normal", model_mode="normal",
         patch_size=1, img_channel=1, img_height=16, img_width=24, sr_size=4,
         num_layers=3, hidden=4, tau=2, k=5, total_length=8, input_length=4, mask=False),
    dict(name="mau_residual_recall", model_name="mau", cell_mode="residual", model_mode="recall",
         patch_size=2, img_channel=3, img_height=16, img_width=24, sr_size=2,
         num_layers=2, hidden=4, tau=3, k=3, total_length=7, input_length=3, mask=False),
    dict(name="stau_residual_recall_rgb", model_name="stau", cell_mode="residual", model_mode="recall",
         patch_size=2, img_channel=3, img_height=16, img_width=16, sr_size=2,
         num_layers=4, hidden=4, tau=2, k=3, total_length=7, input_length=4, mask=False),
    dict(name="mau_no_downsample", model_name="mau", cell_mode="normal", model_mode="normal",
         patch_size=1, img_channel=1, img_height=8, img_width=12, sr_size=1,
         num_layers=2, hidden=4, tau=2, k=5, total_length=6, input_length=3, mask=False),
    dict(name="stau_mask", model_name="stau", cell_mode="normal", model_mode="recall",
         patch_size=1, img_channel=1, img_height=16, img_width=24, sr_size=4,
         num_layers=2, hidden=4, tau=3, k=5, total_length=9, input_length=3, mask=True),
    dict(name="stau_patch2_gray", model_name="stau", cell_mode="normal", model_mode="normal",
         patch_size=2, img_channel=1, img_height=16, img_width=16, sr_size=2,
         num_layers=3, hidden=4, tau=3, k=5, total_length=8, input_length=4, mask=False),
]


def import_reference(repo):
    """Import only core.models.STAU / core.models.MAU from the authors' checkout."""
    sys.path.insert(0, os.path.abspath(repo))
    # core.models.__init__ and core.layers.__init__ are empty in the reference repo, but
    # stub the heavy optional dependencies in case a checkout pulls them in.
    for name in ("cv2", "lpips", "skimage", "skimage.metrics"):
        if name not in sys.modules:
            try:
                __import__(name)
            except Exception:
                sys.modules[name] = types.ModuleType(name)
    from core.models import MAU, STAU  # noqa: E402
    return {"stau": STAU.RNN, "mau": MAU.RNN}


def make_config(case):
    return types.SimpleNamespace(
        patch_size=case["patch_size"],
        img_channel=case["img_channel"],
        img_width=case["img_width"],
        img_height=case["img_height"],
        sr_size=case["sr_size"],
        tau=case["tau"],
        cell_mode=case["cell_mode"],
        model_mode=case["model_mode"],
        filter_size=(case["k"], case["k"]),
        stride=1,
        total_length=case["total_length"],
        input_length=case["input_length"],
        device="cpu",
    )


def perturb(torch, net):
    """LayerNorm weight -> 1 + 0.1 randn, bias -> 0.1 randn; conv biases -> 0.1 randn."""
    nn = torch.nn
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1.0 + 0.1 * torch.randn_like(m.weight))
                m.bias.copy_(0.1 * torch.randn_like(m.bias))
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn_like(m.bias))


def patch(x, p):
    """(B,T,H,W,c) -> (B,T,H/p,W/p,p*p*c), same as core.utils.preprocess.reshape_patch."""
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, h // p, w // p, p * p * c)


def unpatch(x, p):
    """(B,T,H/p,W/p,p*p*c) -> (B,T,H,W,c), inverse of patch (== reshape_patch_back)."""
    b, t, hp, wp, cc = x.shape
    c = cc // (p * p)
    x = x.reshape(b, t, hp, wp, p, p, c)
    x = x.transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, hp * p, wp * p, c)


def run_case(torch, networks, case, seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    cfg = make_config(case)
    num_layers = case["num_layers"]
    num_hidden = [case["hidden"]] * num_layers
    net = networks[case["model_name"]](num_layers, num_hidden, cfg)
    perturb(torch, net)
    net.eval()

    p, c = case["patch_size"], case["img_channel"]
    H, W, T, t_in = case["img_height"], case["img_width"], case["total_length"], case["input_length"]
    rng = np.random.RandomState(seed)
    frames = rng.rand(B, T, H, W, c).astype(np.float32)
    mask_shape = (B, T - t_in - 1, H // p, W // p, p * p * c)
    if case["mask"]:
        while True:  # deterministic given the seed; insist on a mix of 0s and 1s
            flags = rng.randint(0, 2, size=(B, T - t_in - 1)).astype(np.float32)
            if 0 < flags.sum() < flags.size:
                break
        mask = np.broadcast_to(flags[:, :, None, None, None], mask_shape).astype(np.float32)
    else:
        mask = np.zeros(mask_shape, np.float32)

    inp = np.ascontiguousarray(patch(frames, p).transpose(0, 1, 4, 2, 3))  # (B,T,pc,H/p,W/p)
    with torch.no_grad():
        out = net(torch.from_numpy(inp), torch.from_numpy(mask)).numpy()
    preds = unpatch(out.transpose(0, 1, 3, 4, 2), p).astype(np.float32)
    assert preds.shape == (B, T - 1, H, W, c), preds.shape

    config = dict(vars(cfg))
    config["filter_size"] = list(cfg.filter_size)
    config.update(model_name=case["model_name"], num_layers=num_layers, num_hidden=num_hidden)
    arrays = {
        "frames": frames,
        "sampling_mask": mask,
        "predictions": preds,
        "config_json": np.array(json.dumps(config, sort_keys=True)),
    }
    for key, val in net.state_dict().items():
        arrays["state_dict/" + key] = val.detach().cpu().numpy().astype(np.float32)
    n_params = sum(v.numel() for v in net.parameters())
    return arrays, n_params


def paper_param_count(networks):
    cfg = types.SimpleNamespace(
        patch_size=1, img_channel=1, img_width=64, img_height=64, sr_size=4, tau=5,
        cell_mode="normal", model_mode="normal", filter_size=(5, 5), stride=1,
        total_length=20, input_length=10, device="cpu")
    net = networks["stau"](4, [64] * 4, cfg)
    return sum(v.numel() for v in net.parameters())


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    repo = argv[1]
    out_dir = argv[2] if len(argv) > 2 else os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out_dir, exist_ok=True)

    import torch
    torch.set_num_threads(1)
    networks = import_reference(repo)
    print("torch", torch.__version__)

    for idx, case in enumerate(CASES):
        arrays, n_params = run_case(torch, networks, case, seed=1000 + idx)
        path = os.path.join(out_dir, case["name"] + ".npz")
        np.savez_compressed(path, **arrays)
        print("%-26s params=%7d  max|pred|=%.6f  mean(mask)=%.2f  size=%d bytes" % (
            case["name"], n_params, float(np.abs(arrays["predictions"]).max()),
            float(arrays["sampling_mask"].mean()), os.path.getsize(path)))

    print("paper-config STAU.RNN params (4x64, 64x64x1, sr 4, tau 5, k 5, p 1):",
          paper_param_count(networks))


if __name__ == "__main__":
    main(sys.argv)

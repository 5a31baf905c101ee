"""Post-training quantization: give a model trained without QAT the int8 observer ranges deploy needs.

    archdsl compile net.arch --mode deploy --load trained.pt --calibrate mnist1d -o net.py --weights net_int8.pt

The model's int8 regions (`@precision(int8)`) hold one observer per quantized input (archdsl.quant.
ActFakeQuant). Calibration runs batches of real data through the module in eval mode (BatchNorm statistics
and dropout as at inference) with only the observers recording; each observer's range is the mean of the
batches' minima and maxima (equal weights, rather than QAT's slow moving average, so a few batches suffice).
Deploy then chooses the quantized kernels and their scales from those ranges.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from archdsl.errors import ArchError

DATA_HINT = ('give a data set as in a search spec: mnist1d, digits, npz("file.npz") or images("folder"), '
             'or a path to an .npz')


def parse_data(spec: str) -> tuple[str, tuple]:
    """`mnist1d` / `npz("f.npz")` / `images("dir", 32)` / `f.npz` -> (name, args) for archdsl.search.data.load."""
    spec = spec.strip()
    if spec.endswith(".npz") and "(" not in spec:
        return "npz", (spec,)
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:\((.*)\))?", spec)
    if not m:
        raise ArchError(f"--calibrate: cannot read data set '{spec}'", hint=DATA_HINT)
    args = []
    for part in filter(None, (p.strip() for p in (m.group(2) or "").split(","))):
        args.append(int(part) if part.isdigit() else part.strip("\"'"))
    return m.group(1), tuple(args)


def calibration_batches(spec: str, input_shape, batches: int, batch_size: int) -> list[torch.Tensor]:
    """The first `batches` batches of the data set's training split, shaped as the model's input."""
    from archdsl.search.data import load

    if batches < 1 or batch_size < 1:
        raise ArchError("--calibrate-batches and the batch size must be at least 1")
    name, args = parse_data(spec)
    x = load(name, args).head(batches * batch_size)[0]  # only what calibration reads (an image folder decodes it)
    per_sample = tuple(input_shape)
    if x[0].numel() != torch.Size(per_sample).numel():
        raise ArchError(f"--calibrate {spec}: its samples have shape {tuple(x.shape[1:])}, the model's input is "
                        f"{list(per_sample)}", hint="calibrate with the data the model was trained on")
    x = x.reshape(len(x), *per_sample).float()
    return [x[i:i + batch_size] for i in range(0, min(len(x), batches * batch_size), batch_size)]


def observers(module) -> list:
    from archdsl.quant import ActFakeQuant

    return [m for m in module.modules() if isinstance(m, ActFakeQuant)]


def calibrate(module, batches) -> int:
    """Run the batches with only the observers recording (range: mean of the per-batch min / max); returns how
    many observers saw data. The module is left in eval mode."""
    obs = observers(module)
    if not obs:
        return 0
    module.eval()
    saved = [o.averaging for o in obs]
    for o in obs:
        o.seen.zero_()
        o.train()
    try:
        with torch.no_grad():
            for x in batches:
                for o in obs:
                    o.averaging = 1.0 / (int(o.seen) + 1)  # the running mean of the batches seen so far
                module(x)
    finally:
        for o, a in zip(obs, saved):
            o.averaging = a
            o.eval()
    return sum(int(o.seen) > 0 for o in obs)


def load_weights(module, path: str) -> None:
    """Load a train-mode state dict into the module: one saved from the same model at any precisions (fp32
    keys `conv.weight` are found inside the precision wrappers, `conv.op.weight`); observers it lacks keep
    their empty state for calibration. Anything else missing or extra is an error naming the keys."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise ArchError(f"cannot read weights {path}: {e}", hint="give a .pt file saved with torch.save(state_dict)")
    if not isinstance(state, dict):
        raise ArchError(f"{path} holds a {type(state).__name__}, not a state dict")
    load_state(module, state, str(path))


def load_state(module, state: dict, source: str = "the state dict") -> None:
    """load_weights for a state dict in memory."""
    own = module.state_dict()
    mapped = {}
    for key, t in state.items():
        if key not in own:  # fp32 key -> the same tensor inside the node's Precision wrapper
            parts = key.split(".")
            cands = [".".join([*parts[:cut], "op", *parts[cut:]]) for cut in range(len(parts) - 1, 0, -1)
                     if ".".join(parts[:cut]) in module.archdsl_ir]
            key = next((c for c in cands if c in own), key)
        mapped[key] = t
    extra = sorted(k for k in mapped if k not in own)
    missing = sorted(k for k in own if k not in mapped and ".act." not in k)
    if extra or missing:
        raise ArchError(f"{source} does not fit this model: missing {missing[:5]}, unexpected {extra[:5]}",
                        hint="load weights saved from the same .arch model (and --set values)")
    module.load_state_dict(mapped, strict=False)

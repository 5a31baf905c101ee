"""searchspaces/models/swin_unet3d.arch, MONAI's SwinUNETR (feature_size 12, window 4, mergingv2, no stage
normalization): the parameter count derived here by hand from MONAI's layers equals the official module's
3,911,204; the logits have the input's spatial size; the patch merging written with reshape / permute is
PatchMergingV2; the Swin blocks alternate their shift and drop it where one window covers a stage; and, where
MONAI is installed, the model with MONAI's weights computes MONAI's output."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

import archdsl
from archdsl.ir.graph import totals

FILE = Path(__file__).resolve().parents[1] / "searchspaces" / "models" / "swin_unet3d.arch"
MONAI_PARAMS = 3_911_204  # sum(p.numel()) of MONAI 1.6.1 SwinUNETR(1, 2, feature_size=12, window_size=4, ...)


def hand_count(f=12, classes=2, heads=(3, 6, 12, 24), depths=(2, 2, 2, 2), window=4):
    table = (2 * window - 1) ** 3

    def swin_block(d, h):  # norm1, qkv (bias), proj, bias table, norm2, mlp d -> 4d -> d
        return 2 * d + (3 * d * d + 3 * d) + (d * d + d) + table * h + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)

    def merge(d):  # LayerNorm(8d), Linear(8d -> 2d, no bias)
        return 2 * 8 * d + 8 * d * 2 * d

    def res(cin, out):  # UnetResBlock: two bias-free 3^3 convs, a 1x1 projection when the width changes
        return 27 * cin * out + 27 * out * out + (cin * out if cin != out else 0)

    def up(cin, out):  # UnetrUpBlock: bias-free 2^3 transposed conv, concat the skip, res block on 2 * out
        return 8 * cin * out + res(2 * out, out)

    swin = 1 * f * 8 + f  # patch embedding conv 2^3 / 2 with bias
    for i in range(4):
        d = f * 2 ** i
        swin += depths[i] * swin_block(d, heads[i]) + merge(d)
    encoders = res(1, f) + res(f, f) + res(2 * f, 2 * f) + res(4 * f, 4 * f) + res(16 * f, 16 * f)
    decoders = up(16 * f, 8 * f) + up(8 * f, 4 * f) + up(4 * f, 2 * f) + up(2 * f, f) + up(f, f)
    return swin + encoders + decoders + f * classes + classes


def test_parameter_count_is_monais():
    assert hand_count() == MONAI_PARAMS
    G = archdsl.build(FILE)
    assert totals(G)["params"] == MONAI_PARAMS
    assert sum(p.numel() for p in archdsl.compile(G).parameters()) == MONAI_PARAMS


def test_logits_have_the_input_spatial_size():
    G = archdsl.build(FILE, size=32, feature=6, classes=3)
    assert G.nodes[G.graph["input"]]["shape"] == (1, 32, 32, 32)
    assert G.nodes[G.graph["output"]]["shape"] == (3, 32, 32, 32)
    m = archdsl.compile(G).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 1, 32, 32, 32))
    assert y.shape == (2, 3, 32, 32, 32) and torch.isfinite(y).all()
    # at size 32 the last stage (2^3) is smaller than the window 4: its window (and table) is 2^3
    assert totals(G)["params"] == hand_count(f=6, classes=3) - 2 * 24 * ((2 * 4 - 1) ** 3 - 3 ** 3)


def test_shifts_alternate_and_vanish_where_one_window_covers_the_stage():
    m = archdsl.compile(archdsl.build(FILE, feature=6))  # stages of 32, 16, 8, 4 voxels a side
    shifts = [w.shift for w in m.modules() if type(w).__name__ == "WinAttn"]
    assert shifts == [(0, 0, 0), (2, 2, 2)] * 3 + [(0, 0, 0), (0, 0, 0)]
    assert all(w.mask is not None for w in m.modules() if type(w).__name__ == "WinAttn" and any(w.shift))


def test_patch_merge_is_monai_patch_merging_v2(tmp_path):
    src = tmp_path / "merge.arch"
    src.write_text(f'import "{FILE}"\nmodel m() {{\n  input x[5, 4, 6, 2]\n  patch_merge(5, 4)\n}}\n')
    with pytest.raises(archdsl.ArchError, match="reshape"):  # the block reshapes a cube; this map is not one
        archdsl.build(src)
    src.write_text(f'import "{FILE}"\nmodel m() {{\n  input x[5, 4, 4, 4]\n  patch_merge(5, 4)\n}}\n')
    m = archdsl.compile(src).double()
    ln, lin = [x for x in m.modules() if type(x).__name__ in ("ChannelLayerNorm", "Linear")]
    x = torch.randn(2, 5, 4, 4, 4, dtype=torch.float64)
    cl = x.permute(0, 2, 3, 4, 1)  # MONAI's channels-last layout
    cat = torch.cat([cl[:, i::2, j::2, k::2, :] for i, j, k in itertools.product(range(2), repeat=3)], -1)
    mu, var = cat.mean(-1, keepdim=True), cat.var(-1, unbiased=False, keepdim=True)
    normed = (cat - mu) / torch.sqrt(var + 1e-5) * ln.weight.double() + ln.bias.double()
    expected = (normed @ lin.weight.double().T).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(m(x), expected)


def test_the_encoder_decoder_in_the_docs_builds_and_keeps_the_input_size():
    doc = (FILE.parents[2] / "docs" / "language.md").read_text()
    src = next(b for b in doc.split("```")[1::2] if "model unet3d" in b)
    G = archdsl.build(archdsl.parse(src))
    assert G.nodes[G.graph["output"]]["shape"] == (2, 32, 32, 32)
    # `$vol` is the input itself: the second branch's patch embedding reads it
    embed = next(n for n in G.nodes if n.startswith("e1.") and G.nodes[n]["op"] == "conv")
    assert list(G.predecessors(embed)) == [G.graph["input"]]


def _monai_order(keys):
    """MONAI's PatchMergingV2 registers its reduction before its norm; the .arch file norms first."""
    rank = {k: i + (2.5 if "downsample.reduction" in k else 0) for i, k in enumerate(keys)}
    return sorted(keys, key=rank.get)


def test_equals_monai_swin_unetr_with_its_weights():
    """Where MONAI is installed: its SwinUNETR's weights loaded into the .arch model give its output (float64)."""
    nets = pytest.importorskip("monai.networks.nets")
    pytest.importorskip("einops")
    torch.manual_seed(0)
    ref = nets.SwinUNETR(in_channels=1, out_channels=2, feature_size=12, window_size=4, spatial_dims=3,
                         downsample="mergingv2", normalize=False).double().eval()
    # 64^3: at 32^3 MONAI's InstanceNorm refuses the 1-voxel bottleneck and its last stage clamps the window
    mine = archdsl.compile(archdsl.build(FILE)).double().eval()
    pairs = [("embed", "swinViT.patch_embed")] + [(f"x{i}", f"swinViT.layers{i}") for i in range(1, 5)] + [
        ("enc0", "encoder1"), ("enc1", "encoder2"), ("enc2", "encoder3"), ("enc3", "encoder4"), ("dec4", "encoder10"),
        ("dec3", "decoder5"), ("dec2", "decoder4"), ("dec1", "decoder3"), ("dec0", "decoder2"), ("up", "decoder1"),
        ("head", "out")]
    ours, theirs = dict(mine.named_parameters()), dict(ref.named_parameters())
    copied = 0
    with torch.no_grad():
        for a, b in pairs:
            keys_a = [k for k in ours if k.startswith(a + ".")]
            keys_b = _monai_order([k for k in theirs if k.startswith(b + ".")])
            assert [ours[k].shape for k in keys_a] == [theirs[k].shape for k in keys_b], (a, b)
            for ka, kb in zip(keys_a, keys_b):
                if "bias_table" in kb:
                    theirs[kb].normal_(0, 0.1)  # MONAI starts them near zero, which would hide a wrong index
                ours[ka].copy_(theirs[kb])
                copied += 1
    assert copied == len(ours) == len(theirs)
    x = torch.randn(1, 1, 64, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), ref(x), rtol=1e-9, atol=1e-10)

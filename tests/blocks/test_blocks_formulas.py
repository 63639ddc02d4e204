"""Each block against its paper's formula, written out here on a small input.

The references below use only elementary tensor ops (sums, einsum, explicit padding, hand-built
pooling and bilinear matrices, BatchNorm/LayerNorm by their definitions), never the block's own
code paths, so a block that computes something else than the paper (squeezes by max, drops a
residual, pools over the wrong axis) fails here even where its shapes and gradients are fine.
Every parameter and BN running statistic is randomised first (zero-initialised layers would hide
whole terms) and blocks run in eval mode (BN by its running statistics, as written).
(Selective Kernel's is in test_selective_kernel_fast_path.py, Non-local's scaled softmax in
test_blocks_fast_paths.py.)
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctxlit.blocks import (
    GloRe, GlobalContext, LocalRelation, MixedPooling, NonLocal, SimplifiedNonLocal, SqueezeExcite, StripPooling,
)

TOL = dict(rtol=1e-4, atol=1e-5)


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero random parameters and BN running statistics; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.add_(1.0)  # gamma around 1
    return module.eval()


def sample(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- written-out layers


def conv(x: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    """A stride-1 conv with zero padding k // 2: the sum over kernel taps of W[:, :, i, j] applied
    to the input shifted by (i, j), plus the bias."""
    kh, kw = layer.weight.shape[2:]
    h, w = x.shape[2:]
    padded = torch.zeros(*x.shape[:2], h + kh - 1, w + kw - 1)
    padded[:, :, kh // 2:kh // 2 + h, kw // 2:kw // 2 + w] = x
    out = sum(torch.einsum("oc,nchw->nohw", layer.weight[:, :, i, j], padded[:, :, i:i + h, j:j + w])
              for i in range(kh) for j in range(kw))
    return out + (0 if layer.bias is None else layer.bias[None, :, None, None])


def batchnorm(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * gamma + beta with the running statistics."""
    def per_channel(t):
        return t[None, :, None, None]
    return (x - per_channel(bn.running_mean)) / per_channel(torch.sqrt(bn.running_var + bn.eps)) \
        * per_channel(bn.weight) + per_channel(bn.bias)


def cb(x: torch.Tensor, brick: nn.Sequential) -> torch.Tensor:
    """conv -> BN (a ``conv_norm_act`` brick without its ReLU)."""
    return batchnorm(conv(x, brick[0]), brick[1])


def cbr(x: torch.Tensor, brick: nn.Sequential) -> torch.Tensor:
    return torch.relu(cb(x, brick))


def linear(v: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """A 1x1 conv (or Linear) on vectors (N, C_in) -> (N, C_out)."""
    weight = layer.weight.reshape(layer.weight.shape[0], -1)
    return v @ weight.t() + (0 if layer.bias is None else layer.bias)


def adaptive_pool_matrix(size: int, bins: int) -> torch.Tensor:
    """(bins, size): bin i averages positions floor(i*size/bins) .. ceil((i+1)*size/bins) - 1."""
    m = torch.zeros(bins, size)
    for i in range(bins):
        start, end = (i * size) // bins, math.ceil((i + 1) * size / bins)
        m[i, start:end] = 1 / (end - start)
    return m


def bilinear_matrix(size: int, source: int) -> torch.Tensor:
    """(size, source): linear interpolation with align_corners=True (the ends map to the ends)."""
    m = torch.zeros(size, source)
    for i in range(size):
        pos = i * (source - 1) / (size - 1) if size > 1 and source > 1 else 0.0
        lo = min(int(math.floor(pos)), source - 1)
        hi, frac = min(lo + 1, source - 1), pos - lo
        m[i, lo] += 1 - frac
        m[i, hi] += frac
    return m


def pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    ph, pw = adaptive_pool_matrix(x.shape[2], bins), adaptive_pool_matrix(x.shape[3], bins)
    return torch.einsum("ph,nchw,qw->ncpq", ph, x, pw)


def upsample(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    uh, uw = bilinear_matrix(h, t.shape[2]), bilinear_matrix(w, t.shape[3])
    return torch.einsum("hp,ncpq,wq->nchw", uh, t, uw)


# --------------------------------------------------------------------------- Squeeze-and-Excitation


def test_se_is_mean_squeeze_then_fc_relu_fc_sigmoid_scale():
    """Hu et al. 2018, eq. 2-4: z_c = 1/(HW) sum_ij x_c(i, j); s = sigmoid(W2 ReLU(W1 z)); x_c * s_c."""
    block = randomise(SqueezeExcite(16, reduction=4))
    x = sample(2, 16, 5, 7)
    z = x.sum(dim=(2, 3)) / (5 * 7)  # squeeze: the MEAN over positions
    s = torch.sigmoid(linear(torch.relu(linear(z, block.fc1)), block.fc2))  # excitation
    torch.testing.assert_close(block(x), x * s[:, :, None, None], **TOL)


# --------------------------------------------------------------------------- Strip Pooling


def test_spm_gates_the_input_by_its_two_strip_averages():
    """Hou et al. 2020, eq. 1-3: y_h = conv3x1(mean over W), y_w = conv1x3(mean over H), each
    expanded to H x W, summed; out = x * sigmoid(f(ReLU(y)))."""
    block = randomise(StripPooling(8))
    n, c, h, w = 2, 8, 6, 9
    x = sample(n, c, h, w)
    y_h = cb(x.sum(dim=3, keepdim=True) / w, block.strip_h)  # (N, C, H, 1): one value per row
    y_w = cb(x.sum(dim=2, keepdim=True) / h, block.strip_w)  # (N, C, 1, W): one value per column
    y = torch.relu(y_h.expand(n, c, h, w) + y_w.expand(n, c, h, w))
    torch.testing.assert_close(block(x), x * torch.sigmoid(conv(y, block.fuse)), **TOL)


@pytest.mark.parametrize("size, pools", [((8, 8), (4, 2)), ((10, 14), (20, 12))])
def test_mpm_short_and_long_range_branches_with_the_residual(size, pools):
    """Hou et al. 2020, Fig. 3 / SPNet's MPM: a short-range branch (3x3 conv + two pyramid
    pools, bilinearly upsampled), a long-range branch (the two strips), each fused by a 3x3
    conv; concat, 1x1 conv, plus the INPUT (residual), ReLU. The paper's pools 20 and 12 on a
    10x14 map too (adaptive bins then overlap and upsample)."""
    block = randomise(MixedPooling(16, reduction=4, pool1=pools[0], pool2=pools[1]))
    h, w = size
    x = sample(2, 16, h, w)
    a, b = cbr(x, block.reduce_short), cbr(x, block.reduce_long)
    short = (cb(a, block.local) + upsample(cb(pool(a, pools[0]), block.pyramid1), h, w)
             + upsample(cb(pool(a, pools[1]), block.pyramid2), h, w))
    long = (upsample(cb(b.sum(dim=2, keepdim=True) / h, block.strip_w), h, w)
            + upsample(cb(b.sum(dim=3, keepdim=True) / w, block.strip_h), h, w))
    fused = torch.cat([cbr(torch.relu(short), block.fuse_short), cbr(torch.relu(long), block.fuse_long)], dim=1)
    torch.testing.assert_close(block(x), torch.relu(x + cb(fused, block.project)), **TOL)


# --------------------------------------------------------------------------- GCNet


def context(x: torch.Tensor, key: nn.Conv2d | None) -> torch.Tensor:
    """(N, C): sum_j softmax_j(W_k x_j) x_j (attention pooling), or the mean (avg pooling)."""
    n, c, h, w = x.shape
    if key is None:
        return x.sum(dim=(2, 3)) / (h * w)
    logits = torch.einsum("c,nchw->nhw", key.weight[0, :, 0, 0], x).reshape(n, h * w) + key.bias
    weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    weights = weights / weights.sum(dim=1, keepdim=True)  # softmax over the H*W positions
    return torch.einsum("nl,ncl->nc", weights, x.reshape(n, c, h * w))


def transform(c: torch.Tensor, layers: nn.Sequential, layernorm: bool) -> torch.Tensor:
    """W2 ReLU(LN(W1 c)), LN over the hidden channels (biased variance, affine)."""
    v = linear(c, layers[0])
    if layernorm:
        norm = layers[1]
        v = (v - v.mean(dim=1, keepdim=True)) / torch.sqrt(v.var(dim=1, unbiased=False, keepdim=True) + norm.eps)
        v = v * norm.weight.flatten() + norm.bias.flatten()
    return linear(torch.relu(v), layers[3])


@pytest.mark.parametrize("layernorm", [True, False])
@pytest.mark.parametrize("fusion", ["add", "mul", "both"])
@pytest.mark.parametrize("pooling", ["att", "avg"])
def test_gc_context_transform_fusion(pooling, fusion, layernorm):
    """Cao et al. 2019, eq. 3 and Fig. 4: z = F(x, delta(sum_j alpha_j x_j)); add: x + t, mul:
    x * sigmoid(t), both: x * sigmoid(t_mul) + t_add."""
    block = randomise(GlobalContext(16, ratio=1 / 4, pooling=pooling, fusion=fusion, layernorm=layernorm))
    x = sample(2, 16, 5, 6)
    c = context(x, block.key)
    expected = x
    if fusion in ("mul", "both"):
        expected = expected * torch.sigmoid(transform(c, block.transform_mul, layernorm))[:, :, None, None]
    if fusion in ("add", "both"):
        expected = expected + transform(c, block.transform_add, layernorm)[:, :, None, None]
    torch.testing.assert_close(block(x), expected, **TOL)


def test_snl_adds_the_transformed_attention_pooled_context():
    """Cao et al. 2019, eq. 2: z_i = x_i + W_v sum_j softmax_j(W_k x_j) x_j."""
    block = randomise(SimplifiedNonLocal(16))
    x = sample(2, 16, 5, 6)
    expected = x + linear(context(x, block.key), block.value)[:, :, None, None]
    torch.testing.assert_close(block(x), expected, **TOL)


# --------------------------------------------------------------------------- GloRe


@pytest.mark.parametrize("normalize", [False, True])
def test_glore_projects_reasons_and_projects_back(normalize):
    """Chen et al. 2019, eq. 1-3: V = phi(X) B^T (/ L with ``normalize``), Z = ((I - A_g) V) W_g
    as a node-wise conv plus identity then a state conv (after ReLU, as in the official code),
    Y = Z B, out = x + BN(W_e Y)."""
    block = randomise(GloRe(16, normalize=normalize))
    n, c, h, w = 2, 16, 5, 6
    x = sample(n, c, h, w)
    flat = x.reshape(n, c, h * w).transpose(1, 2)  # (N, L, C)
    states = linear(flat, block.reduce).transpose(1, 2)  # (N, S, L)
    proj = linear(flat, block.project).transpose(1, 2)  # B: (N, K, L)
    v = states @ proj.transpose(1, 2)  # (N, S, K)
    if normalize:
        v = v / (h * w)
    v = v + linear(v, block.node_conv)  # nodes mixed by the K x K adjacency, plus identity
    v = linear(torch.relu(v).transpose(1, 2), block.state_conv).transpose(1, 2)  # (N, S, K) state update
    y = (v @ proj).transpose(1, 2)  # (N, L, S)
    out = linear(y, block.extend).transpose(1, 2).reshape(n, c, h, w)
    torch.testing.assert_close(block(x), x + batchnorm(out, block.bn), **TOL)


# --------------------------------------------------------------------------- Local Relation


PHI = {"squared_diff": lambda q, k: -(q - k) ** 2, "abs_diff": lambda q, k: -(q - k).abs(), "product": lambda q, k: q * k}


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("phi", list(PHI))
def test_lr_aggregates_each_window_by_softmax_of_appearance_plus_geometry(phi, stride):
    """Hu et al. 2019, eq. 2-4, position by position: w(p', p) = softmax over the k x k window
    positions p INSIDE the image of Phi(q_p', k_p) + MLP(p - p'); y_p' = sum_p w x_p per group of
    m channels; out = W_out y."""
    k, m = 3, 8
    block = randomise(LocalRelation(16, 24, stride, kernel_size=k, channels_per_group=m, phi=phi))
    n, c, h, w = 2, 16, 5, 6
    x = sample(n, c, h, w)
    q = torch.einsum("gc,nchw->nghw", block.query.weight[:, :, 0, 0], x)  # (N, G, H, W)
    keys = torch.einsum("gc,nchw->nghw", block.key.weight[:, :, 0, 0], x)
    groups = c // m
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    y = torch.zeros(n, c, ho, wo)
    for i in range(ho):
        for j in range(wo):
            py, px = i * stride, j * stride
            logits, values = [], []
            for dy in range(-(k // 2), k // 2 + 1):
                for dx in range(-(k // 2), k // 2 + 1):
                    if 0 <= py + dy < h and 0 <= px + dx < w:
                        prior = linear(torch.relu(linear(torch.tensor([[float(dy), float(dx)]]), block.geometry[0])),
                                       block.geometry[2])[0]  # (G,)
                        logits.append(PHI[phi](q[:, :, py, px], keys[:, :, py + dy, px + dx]) + prior)  # (N, G)
                        values.append(x[:, :, py + dy, px + dx].reshape(n, groups, m))
            weights = torch.stack(logits).softmax(dim=0)  # over the window positions inside the image
            y[:, :, i, j] = (weights[..., None] * torch.stack(values)).sum(dim=0).reshape(n, c)
    expected = torch.einsum("oc,nchw->nohw", block.project.weight[:, :, 0, 0], y)
    torch.testing.assert_close(block(x), expected, **TOL)


# --------------------------------------------------------------------------- Non-local


@pytest.mark.parametrize("subsample", [False, True])
@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian", "dot_product", "concatenation"])
def test_nl_pairwise_function_aggregation_and_residual(mode, subsample):
    """Wang et al. 2018, eq. 1-6: y_i = sum_j f(x_i, x_j) g(x_j) / C(x) with f the mode's
    pairwise function (softmax for the two Gaussian forms, / N_keys for dot product and
    concatenation), keys and g 2x2 max-pooled with ``subsample``; z = x + BN(W_z y)."""
    block = randomise(NonLocal(16, mode=mode, subsample=subsample))
    n, c, h, w = 2, 16, 6, 8
    x = sample(n, c, h, w)
    theta, phi = (x, x) if mode == "gaussian" else (conv(x, block.theta), conv(x, block.phi))
    g = conv(x, block.g)
    if subsample:
        def maxpool(t):
            return t.reshape(n, t.shape[1], h // 2, 2, w // 2, 2).amax(dim=(3, 5))
        phi, g = maxpool(phi), maxpool(g)
    queries = theta.flatten(2).transpose(1, 2)  # (N, L, D)
    keys = phi.flatten(2)  # (N, D, Lk)
    values = g.flatten(2).transpose(1, 2)  # (N, Lk, Ci)
    n_keys = keys.shape[2]
    if mode in ("embedded_gaussian", "gaussian"):
        logits = queries @ keys
        f = torch.exp(logits - logits.amax(dim=2, keepdim=True))
        f = f / f.sum(dim=2, keepdim=True)  # e^{theta_i . phi_j} / sum_j e^{theta_i . phi_j}
    elif mode == "dot_product":
        f = queries @ keys / n_keys
    else:
        w_theta, w_phi = block.concat_project[:block.inter], block.concat_project[block.inter:]
        f = torch.relu((queries @ w_theta)[:, :, None] + (w_phi @ keys)[:, None, :]) / n_keys
    y = (f @ values).transpose(1, 2).reshape(n, block.inter, h, w)
    torch.testing.assert_close(block(x), x + batchnorm(conv(y, block.out), block.bn), **TOL)

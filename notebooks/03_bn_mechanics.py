# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 BN mechanics: the formulas, the code, and PyTorch
#
# **What it shows.** Ioffe & Szegedy's Algorithm 1 (training forward), the backward pass as
# printed in the paper, Algorithm 2 (inference with population statistics and the m/(m-1)
# correction), each next to bnlab's from-scratch implementation (`bnlab.engine.norms.bn_forward`,
# `bn_backward`, `population_statistics`) and checked against PyTorch; then what train vs
# eval mode does to one example's output. **Time:** a few seconds; no training.

# %%
import torch

from bnlab import compose
from bnlab.engine.model import build_model
from bnlab.engine.norms import BatchNormFunction, bn_backward, bn_forward, population_statistics

torch.manual_seed(0)
K, B, C, eps = 1, 8, 3, 1e-3  # one member, a batch of 8 examples, 3 units
x = torch.randn(K, B, C, dtype=torch.float64) * 2 + 1
gamma = torch.rand(K, C, dtype=torch.float64) + 0.5
beta = torch.randn(K, C, dtype=torch.float64)

# %% [markdown]
# ## Algorithm 1: normalise with the mini-batch's own statistics
# $\mu_B = \frac1m\sum_i x_i$, $\sigma_B^2 = \frac1m\sum_i (x_i-\mu_B)^2$ (biased),
# $\hat x_i = (x_i-\mu_B)/\sqrt{\sigma_B^2+\epsilon}$, $y_i = \gamma\hat x_i + \beta$.

# %%
y, cache = bn_forward(x, gamma, beta, eps)
mu, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
by_formula = gamma[:, None] * (x - mu) / torch.sqrt(var + eps) + beta[:, None]
reference = torch.nn.functional.batch_norm(
    x[0], None, None, gamma[0], beta[0], training=True, eps=eps
)
print("max |bnlab - formula| =", (y - by_formula).abs().max().item())
print("max |bnlab - PyTorch| =", (y[0] - reference).abs().max().item())
print("per-unit mean and std of xhat:", cache[3].mean(1), cache[3].std(1, unbiased=False))

# %% [markdown]
# ## The backward pass as printed in the paper
# $\partial\ell/\partial\hat x_i = \partial\ell/\partial y_i\cdot\gamma$, then the
# variance and mean terms, then
# $\partial\ell/\partial x_i = \frac{\partial\ell/\partial\hat x_i}{\sqrt{\sigma_B^2+\epsilon}}
# + \frac{\partial\ell}{\partial\sigma_B^2}\frac{2(x_i-\mu_B)}{m}
# + \frac{\partial\ell}{\partial\mu_B}\frac1m$. `bn_backward` is those lines; autograd
# through PyTorch's own kernel is the independent check.

# %%
dy = torch.randn_like(x)
dx, dgamma, dbeta = bn_backward(dy, cache, gamma, eps)
xr, gr, br = (t[0].clone().requires_grad_() for t in (x, gamma, beta))
torch.nn.functional.batch_norm(xr, None, None, gr, br, training=True, eps=eps).backward(dy[0])
errors = {
    "dx": (dx[0] - xr.grad).abs().max().item(),
    "dgamma": (dgamma[0] - gr.grad).abs().max().item(),
    "dbeta": (dbeta[0] - br.grad).abs().max().item(),
}
ok = torch.autograd.gradcheck(
    lambda a, g, b: BatchNormFunction.apply(a, g, b, eps),
    (x.clone().requires_grad_(), gamma.clone().requires_grad_(), beta.clone().requires_grad_()),
)
errors, ok

# %% [markdown]
# Two consequences visible in the numbers: the gradient w.r.t. x sums to zero over the batch
# for every unit (a shift of all inputs changes nothing), and it is nearly orthogonal to
# $\hat x$ (a rescaling changes nothing either; exactly orthogonal when $\epsilon = 0$, here
# off by the $\epsilon$ term).

# %%
print("sum_i dx_i   =", dx.sum(1))
print("sum_i dx_i xhat_i =", (dx * cache[3]).sum(1))

# %% [markdown]
# ## Algorithm 2: inference with population statistics
# After training, $E[x]$ = mean of the mini-batch means and $Var[x] = \frac{m}{m-1}$ times
# the mean of the (biased) mini-batch variances, over training batches of size m.
# `population_statistics` does that for every BN layer of a model; here on a fresh
# 784-100-100-10 BN network and 50 random "images", recomputed by hand for layer 1.

# %%
cfg = compose(["model.norm=batch", "data.download=false", "data.root=.", "seeds=[0]"])
model = build_model(cfg.model, cfg.seeds, "cpu")
images = torch.rand(1000, 784)
m, n = 20, 50
population_statistics(model, images, batch_size=m, n_batches=n)
idx = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[: m * n]
z = (images[idx].view(n, m, 784) @ model.fc1.weight[0].T).double()  # pre-BN, no bias
mean_by_hand = z.mean(1).mean(0)
var_by_hand = m / (m - 1) * z.var(1, unbiased=False).mean(0)
print("E[x] error:", (model.bn1.population_mean[0] - mean_by_hand).abs().max().item())
print("Var[x] error:", (model.bn1.population_var[0] - var_by_hand).abs().max().item())

# %% [markdown]
# ## Train vs eval mode for one example
# In training mode an example's output depends on the rest of its batch; in eval mode it does
# not. The same image in two different batches:

# %%
one = images[:1]
batch_a = torch.cat([one, images[100:163]])
batch_b = torch.cat([one, images[200:263] * 0.5])  # a darker batch
model.train()
with torch.no_grad():
    out_a, out_b = model(batch_a[None])[0, 0], model(batch_b[None])[0, 0]
model.eval()
for name in ("bn1", "bn2"):
    getattr(model, name).eval_stats = "population"
with torch.no_grad():
    ev_a, ev_b = model(batch_a[None])[0, 0], model(batch_b[None])[0, 0]
print("train mode, |logits(a) - logits(b)| =", (out_a - out_b).abs().max().item())
print("eval mode,  |logits(a) - logits(b)| =", (ev_a - ev_b).abs().max().item())

# %%
assert max(errors.values()) < 1e-10 and ok
assert (y - by_formula).abs().max() < 1e-12
assert (model.bn1.population_var[0] - var_by_hand).abs().max() < 1e-3
assert (out_a - out_b).abs().max() > 1e-3 and (ev_a - ev_b).abs().max() < 1e-5

"""Emulate tf32 operand rounding for the DFT-as-matmul sums and gradient (float64 otherwise).

Why triton_dft uses "tf32x3" for float32 inputs: the table in its docstring came from

    python benchmarks/tf32_emulation.py tf32 tf32x3        # 256² and 512², 2D
    python benchmarks/tf32_emulation_3d.py 128 tf32 tf32x3 # 128³

(CPU only; errors are relative to float64 FFTs, as SPEC §4 measures them.)
"""
import math, sys, torch
from scc_kernels._options import make_options
from scc_kernels._sums import correlation_from_sums
from scc_kernels.bands import half_band_matrix, band_index, hermitian_weights

def tf32(t):  # round to nearest, 10 explicit mantissa bits
    b = t.to(torch.float32).view(torch.int32)
    b = (b + 0x1000) & ~0x1FFF
    return b.view(torch.float32).double()

def split3(a):  # tf32x3: a = hi + lo
    hi = tf32(a); lo = tf32(a.float().double() - hi); return hi, lo

def mm(a, b, mode):
    if mode == "ieee": return a.float().double() @ b.float().double()
    if mode == "tf32": return tf32(a) @ tf32(b)
    ah, al = split3(a); bh, bl = split3(b)
    return ah @ bh + ah @ bl + al @ bh

def twiddles(n, rows):
    k = torch.arange(rows).view(-1, 1); m = torch.arange(n).view(1, -1)
    ang = 2 * math.pi * ((k * m) % n).double() / n
    return torch.cos(ang) / math.sqrt(n), torch.sin(ang) / math.sqrt(n)

def fwd(x, mode):  # x (S, H, W) float64 -> X half (S, H, Wh) complex
    H, W = x.shape[-2:]; Wh = W // 2 + 1
    cw, sw = twiddles(W, Wh); ch, sh = twiddles(H, H)
    tr = mm(x, cw.T, mode); ti = -mm(x, sw.T, mode)
    xr = mm(ch, tr, mode) + mm(sh, ti, mode)
    xi = mm(ch, ti, mode) - mm(sh, tr, mode)
    return torch.complex(xr, xi)

def inv(G, H, W, mode):
    Wh = W // 2 + 1
    cw, sw = twiddles(W, Wh); ch, sh = twiddles(H, H)
    h = hermitian_weights((H, W))[0].view(-1, 1)
    gr, gi = G.real, G.imag
    # U[h, kw] = sum_kh e^{+i} G
    ur = mm(ch.T, gr, mode) - mm(sh.T, gi, mode)
    ui = mm(ch.T, gi, mode) + mm(sh.T, gr, mode)
    return mm(ur, h * cw, mode) - mm(ui, h * sw, mode)

def run(n, spectrum, K, mode, seed):
    torch.manual_seed(seed)
    C = 4
    p = torch.softmax(2 * torch.randn(1, C, n, n, dtype=torch.float64), 1).float().double()[0]
    y = torch.nn.functional.one_hot(torch.randint(0, C, (n, n)), C).movedim(-1, 0).double()
    opts = make_options(spectrum=spectrum, bands=K)
    hm = half_band_matrix((n, n), opts.num_bands)
    res = {}
    for m in ("exact", mode):
        X = torch.fft.rfftn(p, dim=(-2, -1), norm="ortho") if m == "exact" else fwd(p, m)
        Y = torch.fft.rfftn(y, dim=(-2, -1), norm="ortho") if m == "exact" else fwd(y, m)
        if spectrum == "amplitude":
            u, v = X.abs(), Y.abs(); stats = (u, v, u * v, u * u, v * v)
        else:
            stats = (X.real, Y.real, X.real * Y.real + X.imag * Y.imag, X.abs() ** 2, Y.abs() ** 2)
        sums = torch.stack([s.reshape(C, -1) @ hm for s in stats], -1)[None].requires_grad_(True)
        r = correlation_from_sums(sums, (n, n), opts)
        loss = 1 - r
        torch.manual_seed(1); cot = torch.rand(loss.shape, dtype=torch.float64) + 0.5
        (gs,) = torch.autograd.grad((loss * cot).sum(), sums)
        jb = band_index((n, n), opts.num_bands, half=True)
        g_u, _, g_uv, g_uu, _ = gs[0][:, jb].unbind(-1)
        if spectrum == "amplitude":
            ph = torch.where(X.abs() > 0, X / X.abs().clamp_min(1e-300), 0)
            G = (g_u + g_uv * Y.abs() + 2 * g_uu * X.abs()) * ph
        else:
            G = g_u + g_uv * Y + 2 * g_uu * X
        if m == "exact":
            gx = torch.fft.irfftn(G, s=(n, n), dim=(-2, -1), norm="ortho")
        else:
            gx = inv(G, n, n, m)
        res[m] = (loss.detach(), gx)
    le = ((res[mode][0] - res["exact"][0]).abs() / res["exact"][0].abs()).max().item()
    ge = ((res[mode][1] - res["exact"][1]).norm() / res["exact"][1].norm()).item()
    return le, ge

if __name__ == "__main__":
    for n in (256, 512):
      for spectrum, K in (("amplitude", None), ("amplitude", 4), ("complex", 3)):
          for mode in sys.argv[1:]:
              errs = [run(n, spectrum, K, mode, s) for s in range(2)]
              print(n, spectrum, K, mode, "loss %.2e grad %.2e" % (max(e[0] for e in errs), max(e[1] for e in errs)), flush=True)

"""3D version of tf32_emulation.py: operand rounding at every stage, 128³, one softmax channel set."""
import pathlib, sys, torch
sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tf32_emulation import mm, twiddles
from scc_kernels._options import make_options
from scc_kernels._sums import correlation_from_sums
from scc_kernels.bands import half_band_matrix, band_index, hermitian_weights

def cmm_left(Fc, Fs, Zr, Zi, mode, axis):  # apply (Fc - i Fs) along `axis` of complex Z (real planes)
    def ap(F, Z):
        Zm = Z.movedim(axis, -1)
        return mm(Zm.reshape(-1, Zm.shape[-1]), F.T, mode).reshape(*Zm.shape[:-1], F.shape[0]).movedim(-1, axis)
    return ap(Fc, Zr) + ap(Fs, Zi), ap(Fc, Zi) - ap(Fs, Zr)

def fwd(x, mode):  # (S, D, H, W)
    D, H, W = x.shape[-3:]; Wh = W // 2 + 1
    cw, sw = twiddles(W, Wh)
    zr, zi = cmm_left(cw, sw, x, torch.zeros_like(x), mode, -1)
    ch, sh = twiddles(H, H); zr, zi = cmm_left(ch, sh, zr, zi, mode, -2)
    cd, sd = twiddles(D, D); zr, zi = cmm_left(cd, sd, zr, zi, "ieee", -3)  # elementwise fp32 stage
    return torch.complex(zr, zi)

def inv(G, spatial, mode):
    D, H, W = spatial; Wh = W // 2 + 1
    cd, sd = twiddles(D, D); ch, sh = twiddles(H, H); cw, sw = twiddles(W, Wh)
    gr, gi = G.real, G.imag
    gr, gi = cmm_left(cd, -sd, gr, gi, "ieee", -3)   # e^{+i}
    gr, gi = cmm_left(ch, -sh, gr, gi, mode, -2)
    h = hermitian_weights(spatial)[0, 0]
    return mm(gr.reshape(-1, Wh), (h[:, None] * cw), mode).reshape(*gr.shape[:-1], W) - \
           mm(gi.reshape(-1, Wh), (h[:, None] * sw), mode).reshape(*gr.shape[:-1], W)

def run(n, spectrum, K, mode, seed):
    torch.manual_seed(seed); C = 3; spatial = (n, n, n)
    p = torch.softmax(2 * torch.randn(1, C, *spatial, dtype=torch.float64), 1).float().double()[0]
    y = torch.nn.functional.one_hot(torch.randint(0, C, spatial), C).movedim(-1, 0).double()
    opts = make_options(spectrum=spectrum, bands=K); hm = half_band_matrix(spatial, opts.num_bands)
    res = {}
    for m in ("exact", mode):
        X = torch.fft.rfftn(p, dim=(-3, -2, -1), norm="ortho") if m == "exact" else fwd(p, m)
        Y = torch.fft.rfftn(y, dim=(-3, -2, -1), norm="ortho") if m == "exact" else fwd(y, m)
        if spectrum == "amplitude":
            u, v = X.abs(), Y.abs(); stats = (u, v, u * v, u * u, v * v)
        else:
            stats = (X.real, Y.real, X.real * Y.real + X.imag * Y.imag, X.abs() ** 2, Y.abs() ** 2)
        sums = torch.stack([s.reshape(C, -1) @ hm for s in stats], -1)[None].requires_grad_(True)
        loss = 1 - correlation_from_sums(sums, spatial, opts)
        torch.manual_seed(1); cot = torch.rand(loss.shape, dtype=torch.float64) + 0.5
        (gs,) = torch.autograd.grad((loss * cot).sum(), sums)
        g_u, _, g_uv, g_uu, _ = gs[0][:, band_index(spatial, opts.num_bands, half=True)].unbind(-1)
        if spectrum == "amplitude":
            G = (g_u + g_uv * Y.abs() + 2 * g_uu * X.abs()) * torch.where(X.abs() > 0, X / X.abs().clamp_min(1e-300), 0)
        else:
            G = g_u + g_uv * Y + 2 * g_uu * X
        gx = torch.fft.irfftn(G, s=spatial, dim=(-3, -2, -1), norm="ortho") if m == "exact" else inv(G, spatial, m)
        res[m] = (loss.detach(), gx)
    le = ((res[mode][0] - res["exact"][0]).abs() / res["exact"][0].abs()).max().item()
    ge = ((res[mode][1] - res["exact"][1]).norm() / res["exact"][1].norm()).item()
    return le, ge

if __name__ == "__main__":
    n = int(sys.argv[1])
    for spectrum, K in (("amplitude", None), ("amplitude", 4), ("complex", 3)):
        for mode in sys.argv[2:]:
            print(n, spectrum, K, mode, "loss %.2e grad %.2e" % run(n, spectrum, K, mode, 0), flush=True)

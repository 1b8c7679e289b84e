// Host-emulated checks of the CUDA kernels (see docs/cuda.md, "Checking kernel logic without a GPU"):
// each kernel runs under emu.h with the launch configurations of src/cuda/ (and deliberately small grids
// to exercise the grid-stride and row loops) and is compared with a double-precision reference
// written from the CPU kernels' formulas. Run with ./run.sh.
#include "../layer_norm.cu"
#include "../softmax.cu"
#include "../gelu.cu"
#include "../attention.cu"
#include "../tokens.cu"
#include "../patch.cu"
#include "../adamw.cu"
#include <cstdio>
#include <random>
#include <limits>
#include <string>

static std::mt19937 rng(1);
static std::vector<float> rnd(size_t n, float lo = -1, float hi = 1) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto &x : v) x = d(rng);
    return v;
}
static int failures = 0;
template <class A, class B> static void cmp(const char *what, const A &a, const B &b, double tol = 1e-5) {
    if (a.size() != b.size()) { printf("%s: size %zu vs %zu\n", what, a.size(), b.size()); failures++; return; }
    double diff = 0, norm = 0;
    bool nan = false;
    for (size_t i = 0; i < a.size(); ++i) {
        double x = a[i], y = b[i];
        if (std::isnan(x) || std::isnan(y)) nan = true;
        if (x == y) continue;
        diff = std::max(diff, std::fabs(x - y));
    }
    for (size_t i = 0; i < b.size(); ++i) norm = std::max(norm, std::fabs((double)b[i]));
    double e = diff == 0 ? 0 : diff / std::max(norm, 1e-30);
    bool ok = !nan && e <= tol;
    if (!ok) failures++;
    printf("%-60s %10.2e %s\n", what, nan ? INFINITY : e, ok ? "ok" : "FAIL");
}
static dim3u d1(unsigned x, unsigned y = 1) { return dim3u{x, y, 1}; }
static unsigned rows_threads(u64 cols) { u64 t = (cols + 31) / 32 * 32; return (unsigned)std::clamp<u64>(t, 32, 256); }
static unsigned ew_blocks(u64 n, unsigned cap) { return (unsigned)std::clamp<u64>((n + 255) / 256, 1, cap); }

static void test_layer_norm(u64 rows, u64 cols, unsigned grid_cap) {
    auto x = rnd(rows * cols, -2, 3), w = rnd(cols, 0.5, 1.5), b = rnd(cols), dy = rnd(rows * cols);
    float eps = 1e-6f;
    std::vector<float> y(rows * cols), dx(rows * cols), dw(cols), db(cols);
    emu_launch(d1(std::min<u64>(rows, grid_cap)), d1(rows_threads(cols)), [&] { layer_norm_fwd_f32(x.data(), w.data(), b.data(), y.data(), rows, cols, eps); });
    u64 rpc = std::max<u64>((rows + 1023) / 1024, 32), chunks = (rows + rpc - 1) / rpc;
    std::vector<float> stats(2 * rows), pw(chunks * cols), pb(chunks * cols);
    emu_launch(d1(std::min<u64>(rows, grid_cap)), d1(rows_threads(cols)), [&] { layer_norm_bwd_dx_f32(x.data(), w.data(), dy.data(), dx.data(), stats.data(), rows, cols, eps); });
    emu_launch(d1((unsigned)((cols + 255) / 256), (unsigned)chunks), d1(256), [&] { layer_norm_bwd_partial_f32(x.data(), dy.data(), stats.data(), pw.data(), pb.data(), rows, cols, rpc); });
    emu_launch(d1(ew_blocks(cols, grid_cap)), d1(256), [&] { layer_norm_bwd_final_f32(pw.data(), pb.data(), dw.data(), db.data(), chunks, cols); });
    std::vector<double> ry(rows * cols), rdx(rows * cols), rdw(cols, 0), rdb(cols, 0);
    for (u64 r = 0; r < rows; ++r) {
        double mean = 0, var = 0;
        for (u64 c = 0; c < cols; ++c) mean += x[r * cols + c];
        mean /= cols;
        for (u64 c = 0; c < cols; ++c) var += (x[r * cols + c] - mean) * (x[r * cols + c] - mean);
        var /= cols;
        double rstd = 1 / std::sqrt(var + eps), sg = 0, sgx = 0;
        for (u64 c = 0; c < cols; ++c) {
            double xh = (x[r * cols + c] - mean) * rstd, g = dy[r * cols + c] * (double)w[c];
            ry[r * cols + c] = xh * w[c] + b[c];
            sg += g; sgx += g * xh;
            rdw[c] += dy[r * cols + c] * xh; rdb[c] += dy[r * cols + c];
        }
        for (u64 c = 0; c < cols; ++c) {
            double xh = (x[r * cols + c] - mean) * rstd;
            rdx[r * cols + c] = rstd * (dy[r * cols + c] * (double)w[c] - sg / cols - xh * sgx / cols);
        }
    }
    std::string n = "layer_norm " + std::to_string(rows) + "x" + std::to_string(cols) + " grid<=" + std::to_string(grid_cap);
    cmp((n + " y").c_str(), y, ry); cmp((n + " dx").c_str(), dx, rdx); cmp((n + " dw").c_str(), dw, rdw); cmp((n + " db").c_str(), db, rdb);
}

static void test_softmax(u64 rows, u64 cols, unsigned grid_cap) {
    auto x = rnd(rows * cols, -4, 4), dy = rnd(rows * cols);
    const float ninf = -std::numeric_limits<float>::infinity();
    if (rows > 2) { for (u64 c = 0; c < cols; ++c) { x[1 * cols + c] = ninf; if (c % 3 == 0) x[2 * cols + c] = ninf; } }
    std::vector<float> y(rows * cols), dx(rows * cols);
    emu_launch(d1(std::min<u64>(rows, grid_cap)), d1(rows_threads(cols)), [&] { softmax_fwd_f32(x.data(), y.data(), rows, cols); });
    emu_launch(d1(std::min<u64>(rows, grid_cap)), d1(rows_threads(cols)), [&] { softmax_bwd_f32(y.data(), dy.data(), dx.data(), rows, cols); });
    std::vector<double> ry(rows * cols), rdx(rows * cols);
    for (u64 r = 0; r < rows; ++r) {
        double mx = -INFINITY, s = 0, t = 0;
        for (u64 c = 0; c < cols; ++c) mx = std::max(mx, (double)x[r * cols + c]);
        for (u64 c = 0; c < cols; ++c) { ry[r * cols + c] = mx == -INFINITY ? 0 : std::exp(x[r * cols + c] - mx); s += ry[r * cols + c]; }
        for (u64 c = 0; c < cols; ++c) { if (s > 0) ry[r * cols + c] /= s; t += ry[r * cols + c] * dy[r * cols + c]; }
        for (u64 c = 0; c < cols; ++c) rdx[r * cols + c] = ry[r * cols + c] * (dy[r * cols + c] - t);
    }
    std::string n = "softmax " + std::to_string(rows) + "x" + std::to_string(cols) + " grid<=" + std::to_string(grid_cap);
    cmp((n + " y").c_str(), y, ry); cmp((n + " dx").c_str(), dx, rdx);
}

static void test_gelu(u64 n, u64 kind) {
    auto x = rnd(n, -5, 5), dy = rnd(n);
    std::vector<float> y(n), dx(n);
    emu_launch(d1(ew_blocks(n, 3)), d1(256), [&] { gelu_fwd_f32(x.data(), y.data(), n, kind); });
    emu_launch(d1(ew_blocks(n, 3)), d1(256), [&] { gelu_bwd_f32(x.data(), dy.data(), dx.data(), n, kind); });
    std::vector<double> ry(n), rdx(n);
    for (u64 i = 0; i < n; ++i) {
        double v = x[i];
        if (kind == 0) { ry[i] = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); rdx[i] = dy[i] * (0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI)); }
        else { double k = std::sqrt(2 / M_PI), t = std::tanh(k * (v + 0.044715 * v * v * v)); ry[i] = 0.5 * v * (1 + t); rdx[i] = dy[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v)); }
    }
    std::string nm = std::string("gelu ") + (kind ? "tanh " : "erf ") + std::to_string(n);
    cmp((nm + " y").c_str(), y, ry); cmp((nm + " dx").c_str(), dx, rdx);
}

struct V4 { u64 off, s[4]; };
static void test_attention(u64 nb, u64 nh, u64 lq, u64 lk, u64 d, u64 dv, int mask_kind, bool strided, unsigned grid_cap) {
    const float ninf = -std::numeric_limits<float>::infinity();
    // q (N, Lq, H, D) as a view with padding; k as the transpose of (N, H, Lk, D); v contiguous-ish.
    V4 qv{3, {lq * nh * (d + 5), nh * (d + 5), d + 5, 1}};
    V4 kv = strided ? V4{1, {nh * lk * d, d, lk * d, 1}} : V4{0, {lk * nh * d, nh * d, d, 1}};
    V4 vv{2, {lk * nh * dv, nh * dv, dv, 1}};
    auto qbuf = rnd(qv.off + nb * qv.s[0]), kbuf = rnd(kv.off + nb * kv.s[0]), vbuf = rnd(vv.off + nb * vv.s[0]);
    // mask views over (N, H, Lq, Lk): 1 = (Lq, Lk) broadcast, 2 = (N, 1, 1, Lk) pad, 3 = full
    V4 mv{0, {0, 0, 0, 0}};
    std::vector<float> mbuf(1, 0.f);
    if (mask_kind == 1) { mv = V4{1, {0, 0, lk, 1}}; mbuf = rnd(1 + lq * lk); for (u64 i = 0; i < lq; ++i) for (u64 j = 0; j < lk; ++j) if ((i * 7 + j * 3) % 5 == 0 || i == 2) mbuf[1 + i * lk + j] = ninf; }
    if (mask_kind == 2) { mv = V4{0, {lk, 0, 0, 1}}; mbuf.assign(nb * lk, 0.f); for (u64 b = 0; b < nb; ++b) for (u64 j = lk - std::min<u64>(lk, 3 * b); j < lk; ++j) mbuf[b * lk + j] = ninf; }
    if (mask_kind == 3) { mv = V4{0, {nh * lq * lk, lq * lk, lk, 1}}; mbuf = rnd(nb * nh * lq * lk); for (size_t i = 0; i < mbuf.size(); i += 7) mbuf[i] = ninf; }
    auto Q = [&](u64 b, u64 i, u64 h, u64 e) { return (double)qbuf[qv.off + b * qv.s[0] + i * qv.s[1] + h * qv.s[2] + e]; };
    auto K = [&](u64 b, u64 j, u64 h, u64 e) { return (double)kbuf[kv.off + b * kv.s[0] + j * kv.s[1] + h * kv.s[2] + e]; };
    auto Vv = [&](u64 b, u64 j, u64 h, u64 e) { return (double)vbuf[vv.off + b * vv.s[0] + j * vv.s[1] + h * vv.s[2] + e]; };
    auto M = [&](u64 b, u64 h, u64 i, u64 j) { return mask_kind ? (double)mbuf[mv.off + b * mv.s[0] + h * mv.s[1] + i * mv.s[2] + j * mv.s[3]] : 0.0; };
    float scale = 1.0f / std::sqrt((float)d);
    auto dout = rnd(nb * lq * nh * dv);
    std::vector<float> out(nb * lq * nh * dv), dq(nb * lq * nh * d), dk(nb * lk * nh * d), dvo(nb * lk * nh * dv), stats(3 * nb * nh * lq);
    const float *mp = mask_kind ? mbuf.data() + mv.off : qbuf.data();
    u64 has = mask_kind ? 1 : 0;
    auto cfg = [&](u64 rows) { return d1((unsigned)std::clamp<u64>((rows + 3) / 4, 1, grid_cap)); };
#define AARGS nb, nh, lq, lk, d, dv, qv.s[0], qv.s[1], qv.s[2], kv.s[0], kv.s[1], kv.s[2], vv.s[0], vv.s[1], vv.s[2], mv.s[0], mv.s[1], mv.s[2], mv.s[3], has, scale
    const float *qp = qbuf.data() + qv.off, *kp = kbuf.data() + kv.off, *vp = vbuf.data() + vv.off;
    emu_launch(cfg(nb * nh * lq), d1(128), [&] { attention_fwd_f32(qp, kp, vp, mp, out.data(), AARGS); });
    emu_launch(cfg(nb * nh * lq), d1(128), [&] { attention_bwd_q_f32(qp, kp, vp, mp, dout.data(), dq.data(), stats.data(), AARGS); });
    emu_launch(cfg(nb * nh * lk), d1(128), [&] { attention_bwd_kv_f32(qp, kp, vp, mp, dout.data(), stats.data(), dk.data(), dvo.data(), AARGS); });
    std::vector<double> rout(out.size(), 0), rdq(dq.size(), 0), rdk(dk.size(), 0), rdv(dvo.size(), 0), p(lk), dp(lk);
    for (u64 b = 0; b < nb; ++b) for (u64 h = 0; h < nh; ++h) for (u64 i = 0; i < lq; ++i) {
        double mx = -INFINITY, s = 0;
        for (u64 j = 0; j < lk; ++j) { double t = 0; for (u64 e = 0; e < d; ++e) t += Q(b, i, h, e) * K(b, j, h, e); p[j] = t * scale + M(b, h, i, j); mx = std::max(mx, p[j]); }
        for (u64 j = 0; j < lk; ++j) { p[j] = mx == -INFINITY ? 0 : std::exp(p[j] - mx); s += p[j]; }
        for (u64 j = 0; j < lk; ++j) if (s > 0) p[j] /= s;
        u64 row = (b * lq + i) * nh + h;
        double delta = 0;
        for (u64 j = 0; j < lk; ++j) { double t = 0; for (u64 e = 0; e < dv; ++e) { rout[row * dv + e] += p[j] * Vv(b, j, h, e); t += dout[row * dv + e] * Vv(b, j, h, e); } dp[j] = t; delta += p[j] * t; }
        for (u64 j = 0; j < lk; ++j) {
            double ds = p[j] * (dp[j] - delta) * scale;
            u64 krow = (b * lk + j) * nh + h;
            for (u64 e = 0; e < d; ++e) { rdq[row * d + e] += ds * K(b, j, h, e); rdk[krow * d + e] += ds * Q(b, i, h, e); }
            for (u64 e = 0; e < dv; ++e) rdv[krow * dv + e] += p[j] * dout[row * dv + e];
        }
    }
    char nm[200];
    snprintf(nm, sizeof nm, "attn N%llu H%llu Lq%llu Lk%llu D%llu Dv%llu mask%d %s g<=%u", nb, nh, lq, lk, d, dv, mask_kind, strided ? "kT" : "k", grid_cap);
    std::string n = nm;
    cmp((n + " out").c_str(), out, rout); cmp((n + " dq").c_str(), dq, rdq); cmp((n + " dk").c_str(), dk, rdk); cmp((n + " dv").c_str(), dvo, rdv);
}

static void test_tokens() {
    u64 n = 3, l = 20, k = 8, d = 17;
    auto x = rnd(n * l * d);
    std::vector<uint32_t> idx = {0, 5, 5, 19, 2, 2, 2, 7, 1, 1, 0, 18, 3, 4, 5, 6, 9, 9, 9, 9, 10, 11, 12, 25};
    std::vector<float> out(n * k * d), acc(n * l * d, 0.f), g = rnd(n * k * d);
    emu_launch(d1(2), d1(256), [&] { gather_tokens_u32((const uint32_t *)x.data(), idx.data(), (uint32_t *)out.data(), n, l, k, d); });
    emu_launch(d1(2), d1(256), [&] { scatter_add_tokens_f32(g.data(), idx.data(), acc.data(), n, l, k, d); });
    std::vector<double> rout(n * k * d, 0), racc(n * l * d, 0);
    for (u64 b = 0; b < n; ++b) for (u64 r = 0; r < k; ++r) { u64 i = idx[b * k + r]; if (i >= l) continue; for (u64 c = 0; c < d; ++c) { rout[(b * k + r) * d + c] = x[(b * l + i) * d + c]; racc[(b * l + i) * d + c] += g[(b * k + r) * d + c]; } }
    cmp("gather u32 (dup + oob)", out, rout, 0); cmp("scatter_add f32 (dup + oob)", acc, racc, 1e-6);
    // bf16 path of scatter-add: into f32 then convert
    std::vector<__nv_bfloat16> gb(g.size()), ob(n * l * d);
    for (size_t i = 0; i < g.size(); ++i) gb[i] = __float2bfloat16_rn(g[i]);
    std::vector<float> acc2(n * l * d, 0.f);
    emu_launch(d1(2), d1(256), [&] { scatter_add_tokens_bf16(gb.data(), idx.data(), acc2.data(), n, l, k, d); });
    emu_launch(d1(2), d1(256), [&] { f32_to_bf16(acc2.data(), ob.data(), n * l * d); });
    std::vector<float> obf(ob.size()); for (size_t i = 0; i < ob.size(); ++i) obf[i] = __bfloat162float(ob[i]);
    cmp("scatter_add bf16", obf, racc, 1e-2);
    // scatter + zero_rows on u16 data
    std::vector<uint16_t> base(n * l * d), src(n * k * d), o(n * l * d);
    for (size_t i = 0; i < base.size(); ++i) base[i] = (uint16_t)(i * 7 + 1);
    for (size_t i = 0; i < src.size(); ++i) src[i] = (uint16_t)(50000 + i);
    std::vector<uint32_t> sidx = {3, 1, 4, 15, 9, 2, 0, 19, 18, 5, 6, 7, 11, 12, 13, 14, 10, 8, 17, 16, 22, 0, 1, 2};
    o = base;
    emu_launch(d1(1), d1(256), [&] { scatter_tokens_u16(src.data(), sidx.data(), o.data(), n, l, k, d); });
    std::vector<double> ro(base.begin(), base.end());
    for (u64 b = 0; b < n; ++b) for (u64 r = 0; r < k; ++r) { u64 i = sidx[b * k + r]; if (i >= l) continue; for (u64 c = 0; c < d; ++c) ro[(b * l + i) * d + c] = src[(b * k + r) * d + c]; }
    cmp("scatter u16", o, ro, 0);
    o = base;
    emu_launch(d1(3), d1(256), [&] { zero_rows_u16(sidx.data(), o.data(), n, l, k, d); });
    ro.assign(base.begin(), base.end());
    for (u64 b = 0; b < n; ++b) for (u64 r = 0; r < k; ++r) { u64 i = sidx[b * k + r]; if (i >= l) continue; for (u64 c = 0; c < d; ++c) ro[(b * l + i) * d + c] = 0; }
    cmp("zero_rows u16", o, ro, 0);
}

static void test_patch(u64 n, u64 c, u64 t, u64 h, u64 w, u64 tt, u64 p) {
    u64 total = n * c * t * h * w, per = c * t * h * w;
    std::vector<uint32_t> src(total), dst(total), back(total), ref(total);
    for (u64 i = 0; i < total; ++i) src[i] = (uint32_t)i * 2654435761u;
    emu_launch(d1(3), d1(256), [&] { patchify_u32(src.data(), dst.data(), total, c, t, h, w, tt, p, 0); });
    emu_launch(d1(3), d1(256), [&] { patchify_u32(dst.data(), back.data(), total, c, t, h, w, tt, p, 1); });
    for (u64 b = 0; b < n; ++b) { u64 e = 0;
        for (u64 ti = 0; ti < t / tt; ++ti) for (u64 hi = 0; hi < h / p; ++hi) for (u64 wi = 0; wi < w / p; ++wi)
        for (u64 a = 0; a < tt; ++a) for (u64 pi = 0; pi < p; ++pi) for (u64 qi = 0; qi < p; ++qi) for (u64 ch = 0; ch < c; ++ch) {
            u64 frame = ti * tt + a, y = hi * p + pi, x = wi * p + qi;
            ref[b * per + e] = src[b * per + ((ch * t + frame) * h + y) * w + x]; e++; } }
    std::vector<double> r(ref.begin(), ref.end()), s(src.begin(), src.end());
    char nm[100]; snprintf(nm, sizeof nm, "patchify %llux%llux%llux%llux%llu t%llu p%llu", n, c, t, h, w, tt, p);
    cmp(nm, dst, r, 0); cmp((std::string(nm) + " inverse").c_str(), back, s, 0);
}

static void test_adamw() {
    u64 n = 1000;
    auto p = rnd(n), g = rnd(n), m = rnd(n, 0, 0.1f), v = rnd(n, 0, 0.1f);
    auto p2 = p, m2 = m, v2 = v;
    float lr = 1e-2f, wd = 0.05f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, bc1 = 1 - 0.9f * 0.9f, bc2 = 1 - 0.95f * 0.95f;
    float decay = 1.0f - lr * wd, step = lr / bc1, isb = 1.0f / std::sqrt(bc2);
    emu_launch(d1(2), d1(256), [&] { adamw_step_f32(p.data(), g.data(), m.data(), v.data(), n, decay, step, isb, b1, b2, eps); });
    for (u64 i = 0; i < n; ++i) { float mi = b1 * m2[i] + (1 - b1) * g[i]; float vi = b2 * v2[i] + (1 - b2) * g[i] * g[i]; m2[i] = mi; v2[i] = vi; p2[i] = p2[i] * decay - step * mi / (std::sqrt(vi) * isb + eps); }
    cmp("adamw p (bit-exact)", p, p2, 0); cmp("adamw m", m, m2, 0); cmp("adamw v", v, v2, 0);
}

int main() {
    test_layer_norm(7, 33, 1 << 20); test_layer_norm(300, 100, 1 << 20); test_layer_norm(70, 600, 5); test_layer_norm(3, 1, 2);
    test_softmax(6, 37, 1 << 20); test_softmax(3, 1000, 2); test_softmax(5, 1, 3);
    test_gelu(1001, 0); test_gelu(1001, 1);
    test_attention(2, 3, 9, 9, 16, 16, 0, false, 1 << 20);
    test_attention(2, 2, 13, 13, 24, 24, 1, false, 3);
    test_attention(3, 2, 5, 37, 32, 20, 2, true, 1 << 20);
    test_attention(1, 2, 7, 300, 64, 64, 0, false, 2);
    test_attention(2, 3, 33, 70, 128, 128, 3, true, 1 << 20);
    test_attention(1, 1, 40, 3, 256, 200, 1, false, 1 << 20);
    test_tokens();
    test_patch(2, 3, 1, 8, 12, 1, 4); test_patch(2, 3, 4, 8, 8, 2, 4); test_patch(1, 2, 6, 6, 9, 3, 3);
    test_adamw();
    printf("%d failures\n", failures);
    return failures != 0;
}

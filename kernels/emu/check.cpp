// Runs every kernel on the CPU (kernels/emu/emu.h) against double-precision
// references written from the ops' definitions. No GPU needed. Built and run
// by tests/cuda.rs (kernels_match_f64_references_on_the_cpu_emulator), which
// passes the shared constants as defines, the same flags NVRTC gets
// (cuda::compile::defines); it prints the g++ command line it ran.
#include "emu/emu.h"
#include "encoder.cu"
#include "layernorm.cu"
#include "matmul.cu"
#include "reduce.cu"
#include "attention.cu"
#include "activation.cu"
#include "dropout.cu"
#include "crossentropy.cu"
#include "adamw.cu"

#include <random>
static std::mt19937 gen(1);
static std::vector<float> rnd(size_t n, float s = 1.0f) { std::normal_distribution<float> nd; std::vector<float> v(n); for (auto& x : v) x = s * nd(gen); return v; }
static int fails = 0;
static void check(const char* what, const float* got, const std::vector<double>& want, double tol) {
    double scale = 1e-3; for (double w : want) scale = std::max(scale, std::fabs(w));
    double worst = 0; size_t at = 0;
    for (size_t i = 0; i < want.size(); i++) { double e = std::fabs(got[i] - want[i]) / scale; if (!(e <= worst)) { worst = e; at = i; } }
    bool ok = worst <= tol;
    if (!ok) fails++;
    printf("%-40s %s worst %.2e at %zu (got %g want %g)\n", what, ok ? "ok  " : "FAIL", worst, at, want.empty() ? 0.0 : (double)got[at], want.empty() ? 0.0 : want[at]);
}
static long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }
static dim3 ew(long long n) { return {(unsigned)ceil_div(n, THREADS_PER_BLOCK), 1, 1}; }
static dim3 rows_cfg(int rows) { return {(unsigned)ceil_div(rows, WARPS_PER_BLOCK), 1, 1}; }
static const dim3 BLOCK = {THREADS_PER_BLOCK, 1, 1};

static void test_matmul(int m, int n, int k) {
    // forward style: out(m,n) = A(m,k)·W(n,k)ᵀ + bias
    auto a = rnd((size_t)m * k), w = rnd((size_t)n * k), bias = rnd(n), out0 = rnd((size_t)m * n);
    std::vector<float> out = out0;
    dim3 grid = {(unsigned)ceil_div(n, MATMUL_TILE), (unsigned)ceil_div(m, MATMUL_TILE), 1};
    launch(matmul, grid, BLOCK, out.data(), (const float*)a.data(), (i64)k, (i64)1, (const float*)w.data(), (i64)1, (i64)k, (const float*)bias.data(), 1, m, n, k, 0);
    std::vector<double> want((size_t)m * n);
    for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) { double s = bias[j]; for (int q = 0; q < k; q++) s += (double)a[i * k + q] * w[j * k + q]; want[i * n + j] = s; }
    char name[100]; snprintf(name, 100, "matmul fwd %dx%dx%d", m, n, k); check(name, out.data(), want, 1e-5);
    // backward dinp style: out(m,n) += D(m,k)·W(k,n)
    out = out0;
    launch(matmul, grid, BLOCK, out.data(), (const float*)a.data(), (i64)k, (i64)1, (const float*)w.data(), (i64)n, (i64)1, (const float*)nullptr, 0, m, n, k, 1);
    for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) { double s = out0[i * n + j]; for (int q = 0; q < k; q++) s += (double)a[i * k + q] * w[q * n + j]; want[i * n + j] = s; }
    snprintf(name, 100, "matmul dinp %dx%dx%d", m, n, k); check(name, out.data(), want, 1e-5);
    // dw style: out(m,n) += Dᵀ, A(i,q) = d[q*m + i], B(q,j) = x[q*n + j]
    out = out0;
    launch(matmul, grid, BLOCK, out.data(), (const float*)a.data(), (i64)1, (i64)m, (const float*)w.data(), (i64)n, (i64)1, (const float*)nullptr, 0, m, n, k, 1);
    for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) { double s = out0[i * n + j]; for (int q = 0; q < k; q++) s += (double)a[q * m + i] * w[q * n + j]; want[i * n + j] = s; }
    snprintf(name, 100, "matmul dw %dx%dx%d", m, n, k); check(name, out.data(), want, 1e-5);
}

int main() {
    printf("mix64(0x1234) = %llu, mix64(99 ^ mix64(7)) >> 40 = %llu\n", mix64(0x1234), mix64(99ull ^ mix64(7)) >> 40);
    // encoder
    { int n = 3 * 5, t = 5, c = 37, v = 7;
      auto wte = rnd(v * c), wpe = rnd(t * c); std::vector<u32> tok(n); for (int i = 0; i < n; i++) tok[i] = (i * 3) % v;
      std::vector<float> out(n * c);
      launch(encoder_forward, ew(n * c), BLOCK, out.data(), (const u32*)tok.data(), (const float*)wte.data(), (const float*)wpe.data(), n, t, c);
      std::vector<double> want(n * c); for (int r = 0; r < n; r++) for (int j = 0; j < c; j++) want[r * c + j] = (double)(wte[tok[r] * c + j] + wpe[(r % t) * c + j]);
      check("encoder_forward", out.data(), want, 0);
      auto dout = rnd(n * c), dwte = rnd(v * c), dwpe = rnd(t * c);
      std::vector<double> wte_want(dwte.begin(), dwte.end()), wpe_want(dwpe.begin(), dwpe.end());
      for (int r = 0; r < n; r++) for (int j = 0; j < c; j++) { wte_want[tok[r] * c + j] += dout[r * c + j]; wpe_want[(r % t) * c + j] += dout[r * c + j]; }
      launch(encoder_backward_wte, dim3{(unsigned)ceil_div(c, THREADS_PER_BLOCK), (unsigned)v, 1}, BLOCK, dwte.data(), (const float*)dout.data(), (const u32*)tok.data(), n, v, c);
      launch(encoder_backward_wpe, ew(t * c), BLOCK, dwpe.data(), (const float*)dout.data(), n, t, c);
      check("encoder_backward wte", dwte.data(), wte_want, 1e-6); check("encoder_backward wpe", dwpe.data(), wpe_want, 1e-6); }
    // layernorm
    { int n = 70, c = 45; auto x = rnd(n * c, 2), w = rnd(c), b = rnd(c);
      std::vector<float> out(n * c), mean(n), rstd(n);
      launch(layernorm_forward, rows_cfg(n), BLOCK, out.data(), mean.data(), rstd.data(), (const float*)x.data(), (const float*)w.data(), (const float*)b.data(), n, c);
      std::vector<double> want(n * c), wm(n), wr(n);
      for (int r = 0; r < n; r++) { double m = 0, v = 0; for (int j = 0; j < c; j++) m += x[r * c + j]; m /= c; for (int j = 0; j < c; j++) v += (x[r * c + j] - m) * (x[r * c + j] - m); v /= c; double rs = 1 / std::sqrt(v + 1e-5); wm[r] = m; wr[r] = rs; for (int j = 0; j < c; j++) want[r * c + j] = (x[r * c + j] - m) * rs * w[j] + b[j]; }
      check("layernorm_forward out", out.data(), want, 1e-5); check("layernorm_forward mean", mean.data(), wm, 1e-5); check("layernorm_forward rstd", rstd.data(), wr, 1e-5);
      auto dout = rnd(n * c), dinp0 = rnd(n * c); auto dinp = dinp0;
      launch(layernorm_backward, rows_cfg(n), BLOCK, dinp.data(), 1, (const float*)dout.data(), (const float*)x.data(), (const float*)w.data(), (const float*)mean.data(), (const float*)rstd.data(), n, c);
      std::vector<double> wd(n * c), wdw(c, 0), wdb(c, 0);
      for (int r = 0; r < n; r++) { double a = 0, bb = 0; for (int j = 0; j < c; j++) { double xh = (x[r * c + j] - wm[r]) * wr[r]; a += dout[r * c + j] * w[j]; bb += dout[r * c + j] * w[j] * xh; wdw[j] += xh * dout[r * c + j]; wdb[j] += dout[r * c + j]; } a /= c; bb /= c;
        for (int j = 0; j < c; j++) { double xh = (x[r * c + j] - wm[r]) * wr[r]; wd[r * c + j] = dinp0[r * c + j] + wr[r] * (dout[r * c + j] * w[j] - a - xh * bb); } }
      check("layernorm_backward dinp (acc)", dinp.data(), wd, 1e-5);
      int blocks = ceil_div(n, ROWS_PER_SUM_BLOCK); std::vector<float> partial(blocks * 2 * c); std::vector<float> dw(c, 0), db(c, 0);
      launch(layernorm_backward_partials, dim3{(unsigned)blocks, (unsigned)ceil_div(c, THREADS_PER_BLOCK), 1}, BLOCK, partial.data(), (const float*)dout.data(), (const float*)x.data(), (const float*)mean.data(), (const float*)rstd.data(), n, c, ROWS_PER_SUM_BLOCK);
      launch(sum_partials, ew(c), BLOCK, dw.data(), (const float*)partial.data(), blocks, 2 * c, c);
      launch(sum_partials, ew(c), BLOCK, db.data(), (const float*)partial.data() + c, blocks, 2 * c, c);
      check("layernorm dw", dw.data(), wdw, 1e-5); check("layernorm db", db.data(), wdb, 1e-5); }
    // matmul
    test_matmul(1, 1, 1); test_matmul(7, 5, 3); test_matmul(37, 70, 19); test_matmul(130, 65, 77);
    // bias grad
    { int n = 150, wdt = 300; auto x = rnd(n * wdt); int blocks = ceil_div(n, ROWS_PER_SUM_BLOCK); std::vector<float> partial(blocks * wdt); auto out0 = rnd(wdt); auto out = out0;
      launch(column_partials, dim3{(unsigned)blocks, (unsigned)ceil_div(wdt, THREADS_PER_BLOCK), 1}, BLOCK, partial.data(), (const float*)x.data(), n, wdt, ROWS_PER_SUM_BLOCK);
      launch(sum_partials, ew(wdt), BLOCK, out.data(), (const float*)partial.data(), blocks, wdt, wdt);
      std::vector<double> want(out0.begin(), out0.end()); for (int r = 0; r < n; r++) for (int j = 0; j < wdt; j++) want[j] += x[r * wdt + j];
      check("bias grad", out.data(), want, 1e-5); }
    // attention with dropout
    for (int drop = 0; drop < 2; drop++) {
      int b = 2, t = 37, h = 3, c = 12, hs = c / h; float scale = 1 / std::sqrt((float)hs);
      u64 key = 4242; u32 thr = drop ? (u32)std::ceil(0.2 * 16777216.0) : 0; float keep = drop ? (float)(1.0 / (1.0 - 0.2)) : 1.0f;
      auto qkv = rnd(b * t * 3 * c); int tt = b * h * t * t; std::vector<float> att(tt), ad(tt), out(b * t * c);
      launch(attention_forward_scores, ew(tt), BLOCK, att.data(), (const float*)qkv.data(), b, t, c, h, scale);
      launch(attention_forward_softmax, rows_cfg(b * h * t), BLOCK, att.data(), ad.data(), b * h * t, t, drop, key, thr, keep);
      const float* probs = drop ? ad.data() : att.data();
      launch(attention_forward_values, ew(b * t * c), BLOCK, out.data(), probs, (const float*)qkv.data(), b, t, c, h);
      std::vector<double> P(tt, 0), PD(tt, 0), want(b * t * c, 0);
      auto Q = [&](int bi, int i, int hi, int d) { return (double)qkv[(bi * t + i) * 3 * c + hi * hs + d]; };
      auto K = [&](int bi, int i, int hi, int d) { return (double)qkv[(bi * t + i) * 3 * c + c + hi * hs + d]; };
      auto V = [&](int bi, int i, int hi, int d) { return (double)qkv[(bi * t + i) * 3 * c + 2 * c + hi * hs + d]; };
      auto F = [&](long long idx) { return drop ? (double)dropout_factor(key, thr, keep, idx) : 1.0; };
      for (int bi = 0; bi < b; bi++) for (int hi = 0; hi < h; hi++) for (int i = 0; i < t; i++) {
        long long base = ((long long)(bi * h + hi) * t + i) * t; std::vector<double> s(i + 1); double mx = -1e300;
        for (int j = 0; j <= i; j++) { double z = 0; for (int d = 0; d < hs; d++) z += Q(bi, i, hi, d) * K(bi, j, hi, d); s[j] = z / std::sqrt((double)hs); mx = std::max(mx, s[j]); }
        double tot = 0; for (int j = 0; j <= i; j++) tot += std::exp(s[j] - mx);
        for (int j = 0; j <= i; j++) { P[base + j] = std::exp(s[j] - mx) / tot; PD[base + j] = P[base + j] * F(base + j); }
        for (int d = 0; d < hs; d++) { double o = 0; for (int j = 0; j <= i; j++) o += PD[base + j] * V(bi, j, hi, d); want[(bi * t + i) * c + hi * hs + d] = o; } }
      check(drop ? "attention fwd att (drop)" : "attention fwd att", att.data(), P, 1e-5);
      if (drop) check("attention fwd att_drop", ad.data(), PD, 1e-5);
      check(drop ? "attention fwd out (drop)" : "attention fwd out", out.data(), want, 1e-5);
      // backward
      auto dy = rnd(b * t * c); std::vector<float> datt(tt), dqkv(b * t * 3 * c);
      launch(attention_backward_dprobs, ew(tt), BLOCK, datt.data(), (const float*)dy.data(), (const float*)qkv.data(), b, t, c, h, drop, key, thr, keep);
      launch(attention_backward_dscores, rows_cfg(b * h * t), BLOCK, datt.data(), (const float*)att.data(), b * h * t, t, scale);
      launch(attention_backward_dqkv, ew(b * t * c), BLOCK, dqkv.data(), (const float*)datt.data(), probs, (const float*)dy.data(), (const float*)qkv.data(), b, t, c, h);
      std::vector<double> wq(b * t * 3 * c, 0);
      for (int bi = 0; bi < b; bi++) for (int hi = 0; hi < h; hi++) {
        long long bb = (long long)(bi * h + hi) * t * t; std::vector<double> dS(t * t, 0);
        for (int i = 0; i < t; i++) { std::vector<double> dP(t, 0); double dot = 0;
          for (int j = 0; j <= i; j++) { double z = 0; for (int d = 0; d < hs; d++) z += dy[(bi * t + i) * c + hi * hs + d] * V(bi, j, hi, d); dP[j] = z * F(bb + i * t + j); dot += dP[j] * P[bb + i * t + j]; }
          for (int j = 0; j <= i; j++) dS[i * t + j] = P[bb + i * t + j] * (dP[j] - dot) / std::sqrt((double)hs); }
        for (int i = 0; i < t; i++) for (int d = 0; d < hs; d++) { double q = 0, k = 0, v = 0;
          for (int j = 0; j < t; j++) { q += dS[i * t + j] * K(bi, j, hi, d); k += dS[j * t + i] * Q(bi, j, hi, d); v += PD[bb + j * t + i] * dy[(bi * t + j) * c + hi * hs + d]; }
          long long o = (long long)(bi * t + i) * 3 * c + hi * hs + d; wq[o] = q; wq[o + c] = k; wq[o + 2 * c] = v; } }
      check(drop ? "attention bwd dqkv (drop)" : "attention bwd dqkv", dqkv.data(), wq, 1e-5);
    }
    // activations and residual (each with a bias of width w over the rows), dropout
    { long long n = 1000; int w = 40; auto x = rnd(n, 3), d = rnd(n), bias = rnd(w); std::vector<float> y(n), g(n); std::vector<double> wy(n), wg(n);
      launch(activation_forward, ew(n), BLOCK, y.data(), (const float*)x.data(), (const float*)bias.data(), n, w, 0);
      launch(activation_backward, ew(n), BLOCK, g.data(), (const float*)d.data(), (const float*)x.data(), (const float*)bias.data(), n, w, 0);
      double s = std::sqrt(2 / M_PI);
      for (int i = 0; i < n; i++) { double v = (double)x[i] + bias[i % w], th = std::tanh(s * (v + 0.044715 * v * v * v)); wy[i] = 0.5 * v * (1 + th); wg[i] = d[i] * (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * s * (1 + 3 * 0.044715 * v * v)); }
      check("gelu fwd", y.data(), wy, 1e-6); check("gelu bwd", g.data(), wg, 1e-6);
      launch(activation_forward, ew(n), BLOCK, y.data(), (const float*)x.data(), (const float*)bias.data(), n, w, 1);
      for (int i = 0; i < n; i++) wy[i] = std::max(0.0, (double)(x[i] + bias[i % w])); check("relu fwd", y.data(), wy, 0);
      launch(activation_backward, ew(n), BLOCK, g.data(), (const float*)d.data(), (const float*)x.data(), (const float*)bias.data(), n, w, 1);
      for (int i = 0; i < n; i++) wg[i] = x[i] + bias[i % w] > 0 ? d[i] : 0.0; check("relu bwd", g.data(), wg, 0);
      u64 key = 99; u32 thr = (u32)std::ceil(0.25 * 16777216.0); float keep = (float)(1 / 0.75);
      y = d; launch(residual_forward, ew(n), BLOCK, y.data(), (const float*)x.data(), (const float*)bias.data(), n, w, key, thr, keep);
      int dropped = 0; for (int i = 0; i < n; i++) { float f = dropout_factor(key, thr, keep, i); dropped += f == 0; wy[i] = x[i] + (d[i] + bias[i % w]) * f; }
      check("residual_forward", y.data(), wy, 0); printf("dropped %d of 1000 at p=0.25\n", dropped);
      launch(dropout_backward, ew(n), BLOCK, g.data(), (const float*)d.data(), n, key, thr, keep);
      for (int i = 0; i < n; i++) wg[i] = d[i] * dropout_factor(key, thr, keep, i); check("dropout_backward", g.data(), wg, 0); }
    // crossentropy
    { int n = 13, v = 100; auto z = rnd(n * v, 3); std::vector<u32> tg(n); std::vector<float> mask(n); for (int i = 0; i < n; i++) { tg[i] = (i * 7) % v; mask[i] = i % 4 ? 1.0f : 0.0f; }
      std::vector<float> loss(n), probs(n * v), dl(n * v);
      launch(crossentropy_forward, rows_cfg(n), BLOCK, loss.data(), probs.data(), (const float*)z.data(), (const u32*)tg.data(), (const float*)mask.data(), n, v);
      launch(crossentropy_backward, ew(n * v), BLOCK, dl.data(), (const float*)probs.data(), (const u32*)tg.data(), (const float*)mask.data(), 0.25f, n, v);
      std::vector<double> wp(n * v), wl(n), wd(n * v);
      for (int r = 0; r < n; r++) { double mx = -1e300, tot = 0; for (int j = 0; j < v; j++) mx = std::max(mx, (double)z[r * v + j]); for (int j = 0; j < v; j++) tot += std::exp(z[r * v + j] - mx);
        for (int j = 0; j < v; j++) { wp[r * v + j] = std::exp(z[r * v + j] - mx) / tot; wd[r * v + j] = (wp[r * v + j] - (j == (int)tg[r])) * mask[r] * 0.25; }
        wl[r] = mask[r] * (std::log(tot) + mx - z[r * v + tg[r]]); }
      check("crossentropy probs", probs.data(), wp, 1e-6); check("crossentropy losses", loss.data(), wl, 1e-6); check("crossentropy dlogits", dl.data(), wd, 1e-6); }
    // crossentropy on confident rows: the target's logit 20 to 40 above the
    // rest, so p_target rounds to 1 in float32; the loss and the target's
    // gradient must keep their size (relative error against float64).
    { int n = 6, v = 100; auto z = rnd(n * v); std::vector<u32> tg(n); std::vector<float> mask(n, 1.0f);
      for (int r = 0; r < n; r++) { tg[r] = (r * 13) % v; z[r * v + tg[r]] += 20.0f + 4.0f * r; }
      std::vector<float> loss(n), probs(n * v), dl(n * v);
      launch(crossentropy_forward, rows_cfg(n), BLOCK, loss.data(), probs.data(), (const float*)z.data(), (const u32*)tg.data(), (const float*)mask.data(), n, v);
      launch(crossentropy_backward, ew(n * v), BLOCK, dl.data(), (const float*)probs.data(), (const u32*)tg.data(), (const float*)mask.data(), 1.0f, n, v);
      double worst = 0;
      for (int r = 0; r < n; r++) { double others = 0; for (int j = 0; j < v; j++) if (j != (int)tg[r]) others += std::exp((double)z[r * v + j] - z[r * v + tg[r]]);
        double want_loss = std::log1p(others), want_dt = -others / (1 + others);
        worst = std::max({worst, std::fabs(loss[r] - want_loss) / want_loss, std::fabs(dl[r * v + tg[r]] - want_dt) / -want_dt}); }
      bool ok = worst <= 1e-5; if (!ok) fails++;
      printf("%-40s %s worst relative %.2e\n", "crossentropy confident rows", ok ? "ok  " : "FAIL", worst); }
    // sum of squares
    { long long n = 40000; auto x = rnd(n); int chunks = ceil_div(n, SUM_SQUARES_CHUNK); std::vector<double> part(chunks);
      launch(sum_squares, dim3{(unsigned)chunks, 1, 1}, BLOCK, part.data(), (const float*)x.data(), n, SUM_SQUARES_CHUNK);
      double got = 0, want = 0; for (double p : part) got += p; for (float v : x) want += (double)v * v;
      printf("sum_squares %s got %.12g want %.12g\n", std::fabs(got - want) < 1e-9 * want ? "ok  " : "FAIL", got, want); if (!(std::fabs(got - want) < 1e-9 * want)) fails++; }
    // adamw
    { long long n = 777; auto p = rnd(n), g = rnd(n), m = rnd(n, 0.1f), v = rnd(n, 0.1f); for (auto& x : v) x = std::fabs(x);
      auto p0 = p, m0 = m, v0 = v;
      float b1 = 0.9f, b2 = 0.95f, ob1 = (float)(1 - 0.9), ob2 = (float)(1 - 0.95), lr = 3e-3f, eps = 1e-8f, gs = 0.5f, bc1 = (float)(1 / (1 - std::pow(0.9, 3))), bc2 = (float)(1 / (1 - std::pow(0.95, 3))), decay = (float)(1 - 3e-3 * 0.1);
      launch(adamw_update, ew(n), BLOCK, p.data(), (const float*)g.data(), m.data(), v.data(), n, b1, b2, ob1, ob2, lr, eps, gs, bc1, bc2, decay);
      std::vector<double> wp(n);
      for (int i = 0; i < n; i++) { float gg = g[i] * gs; float mi = b1 * m0[i] + ob1 * gg; float vi = b2 * v0[i] + ob2 * gg * gg; wp[i] = p0[i] * decay - lr * (mi * bc1) / (std::sqrt(vi * bc2) + eps); }
      check("adamw params (exact)", p.data(), wp, 0); }
    printf(fails ? "%d FAILED\n" : "all ok\n", fails);
    return fails != 0;
}

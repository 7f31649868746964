// Runs the kernels on the CPU (kernels/emu/emu.h), one case per run, for the
// test that checks them against the ops' f64 references (tests/cuda.rs,
// kernels_match_f64_references_on_the_cpu_emulator; the references are
// tests/common/reference.rs). This file holds no reference: it launches the
// kernels as the CUDA backend does and hands their outputs back.
//   g++ -std=c++20 -O1 -pthread -ffp-contract=off -Ikernels -DNAME=VALUE… kernels/emu/check.cpp -o /tmp/ebb-emu
// with the shared constants as defines, the flags NVRTC gets
// (cuda::compile::defines; the test prints the command it ran).
//   /tmp/ebb-emu CASE ARGS... < inputs > outputs
// CASE and its sizes and scalars are the arguments (floats written so they
// read back to the same f32). The inputs on stdin and the outputs on stdout
// are arrays one after another, each its length in bytes (u64) then its
// elements (f32, u32 or f64), little-endian, in the order each case lists.
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

#include <cstdlib>
#include <sstream>
#include <string>

[[noreturn]] static void die(const std::string& why) { fprintf(stderr, "ebb-emu: %s\n", why.c_str()); exit(2); }
static int argc_; static char** argv_;
// Argument i of the command line, as a T (an integer, float or string).
template <class T> static T arg(int i) {
    if (i >= argc_) die("missing argument " + std::to_string(i));
    std::istringstream s(argv_[i]); T x;
    if (!(s >> x) || !s.eof()) die(std::string("bad argument ") + argv_[i]);
    return x;
}
// The next input array, which must hold n elements of T.
template <class T> static std::vector<T> read(size_t n) {
    u64 bytes = 0;
    if (fread(&bytes, 8, 1, stdin) != 1 || bytes != n * sizeof(T)) die("input of " + std::to_string(bytes) + " bytes, expected " + std::to_string(n * sizeof(T)));
    std::vector<T> v(n);
    if (fread(v.data(), 1, bytes, stdin) != bytes) die("short input");
    return v;
}
template <class T> static void write(const std::vector<T>& v) {
    u64 bytes = v.size() * sizeof(T);
    fwrite(&bytes, 8, 1, stdout); fwrite(v.data(), 1, bytes, stdout);
}
static long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }
static dim3 ew(long long n) { return {(unsigned)ceil_div(n, THREADS_PER_BLOCK), 1, 1}; }
static dim3 rows_cfg(int rows) { return {(unsigned)ceil_div(rows, WARPS_PER_BLOCK), 1, 1}; }
static const dim3 BLOCK = {THREADS_PER_BLOCK, 1, 1};

// encoder N T C V: tokens (N, u32), wte (V,C), wpe (T,C), dout (N,C), dwte (V,C), dwpe (T,C)
//   → out (N,C), dwte, dwpe (+= dout's rows)
static void run_encoder() {
    int n = arg<int>(2), t = arg<int>(3), c = arg<int>(4), v = arg<int>(5);
    auto tok = read<u32>(n); auto wte = read<float>(v * c), wpe = read<float>(t * c), dout = read<float>(n * c), dwte = read<float>(v * c), dwpe = read<float>(t * c);
    std::vector<float> out(n * c);
    launch(encoder_forward, ew(n * c), BLOCK, out.data(), (const u32*)tok.data(), (const float*)wte.data(), (const float*)wpe.data(), n, t, c);
    launch(encoder_backward_wte, dim3{(unsigned)ceil_div(c, THREADS_PER_BLOCK), (unsigned)v, 1}, BLOCK, dwte.data(), (const float*)dout.data(), (const u32*)tok.data(), n, v, c);
    launch(encoder_backward_wpe, ew(t * c), BLOCK, dwpe.data(), (const float*)dout.data(), n, t, c);
    write(out); write(dwte); write(dwpe);
}

// soft_prompt N T C K V: tokens (N, u32), soft (K,C), wte (V,C), wpe (T,C), dout (N,C), dsoft (K,C)
//   → out (N,C) with K soft embeddings after each sequence's first token, dsoft (+= dout's rows there)
static void run_soft_prompt() {
    int n = arg<int>(2), t = arg<int>(3), c = arg<int>(4), k = arg<int>(5), v = arg<int>(6);
    auto tok = read<u32>(n); auto soft = read<float>(k * c), wte = read<float>(v * c), wpe = read<float>(t * c), dout = read<float>(n * c), dsoft = read<float>(k * c);
    std::vector<float> out(n * c);
    launch(soft_prompt_forward, ew((long long)n * c), BLOCK, out.data(), (const u32*)tok.data(), (const float*)soft.data(), (const float*)wte.data(), (const float*)wpe.data(), n, t, c, k);
    launch(soft_prompt_backward, ew((long long)k * c), BLOCK, dsoft.data(), (const float*)dout.data(), n, t, c, k);
    write(out); write(dsoft);
}

// layernorm N C: x (N,C), w (C), b (C), dout (N,C), dinp (N,C), dw (C), db (C)
//   → out (N,C), mean (N), rstd (N), dinp (+=), dw (+=), db (+=); the backward uses the forward's mean and rstd
static void run_layernorm() {
    int n = arg<int>(2), c = arg<int>(3);
    auto x = read<float>(n * c), w = read<float>(c), b = read<float>(c), dout = read<float>(n * c), dinp = read<float>(n * c), dw = read<float>(c), db = read<float>(c);
    std::vector<float> out(n * c), mean(n), rstd(n);
    launch(layernorm_forward, rows_cfg(n), BLOCK, out.data(), mean.data(), rstd.data(), (const float*)x.data(), (const float*)w.data(), (const float*)b.data(), n, c);
    launch(layernorm_backward, rows_cfg(n), BLOCK, dinp.data(), 1, (const float*)dout.data(), (const float*)x.data(), (const float*)w.data(), (const float*)mean.data(), (const float*)rstd.data(), n, c);
    int blocks = ceil_div(n, ROWS_PER_SUM_BLOCK); std::vector<float> partial(blocks * 2 * c);
    launch(layernorm_backward_partials, dim3{(unsigned)blocks, (unsigned)ceil_div(c, THREADS_PER_BLOCK), 1}, BLOCK, partial.data(), (const float*)dout.data(), (const float*)x.data(), (const float*)mean.data(), (const float*)rstd.data(), n, c, ROWS_PER_SUM_BLOCK);
    launch(sum_partials, ew(c), BLOCK, dw.data(), (const float*)partial.data(), blocks, 2 * c, c);
    launch(sum_partials, ew(c), BLOCK, db.data(), (const float*)partial.data() + c, blocks, 2 * c, c);
    write(out); write(mean); write(rstd); write(dinp); write(dw); write(db);
}

// matmul STYLE M N K: a (M·K), w (N·K), bias (N), out (M,N) → out, in one of the backend's three products:
//   forward  out = A (M,K) · W (N,K)ᵀ + bias
//   dinp     out += D (M,K) · W (K,N)
//   dw       out += Dᵀ · X with D = a (K,M), X = w (K,N)
static void run_matmul() {
    auto style = arg<std::string>(2); int m = arg<int>(3), n = arg<int>(4), k = arg<int>(5);
    auto a = read<float>((size_t)m * k), w = read<float>((size_t)n * k), bias = read<float>(n), out = read<float>((size_t)m * n);
    dim3 grid = {(unsigned)ceil_div(n, MATMUL_TILE), (unsigned)ceil_div(m, MATMUL_TILE), 1};
    if (style == "forward")
        launch(matmul, grid, BLOCK, out.data(), (const float*)a.data(), (i64)k, (i64)1, (const float*)w.data(), (i64)1, (i64)k, (const float*)bias.data(), 1, m, n, k, 0);
    else if (style == "dinp")
        launch(matmul, grid, BLOCK, out.data(), (const float*)a.data(), (i64)k, (i64)1, (const float*)w.data(), (i64)n, (i64)1, (const float*)nullptr, 0, m, n, k, 1);
    else if (style == "dw")
        launch(matmul, grid, BLOCK, out.data(), (const float*)a.data(), (i64)1, (i64)m, (const float*)w.data(), (i64)n, (i64)1, (const float*)nullptr, 0, m, n, k, 1);
    else die("no matmul style " + style);
    write(out);
}

// bias_grad N W: x (N,W), out (W) → out (+= Σ over the rows of x)
static void run_bias_grad() {
    int n = arg<int>(2), wdt = arg<int>(3);
    auto x = read<float>(n * wdt), out = read<float>(wdt);
    int blocks = ceil_div(n, ROWS_PER_SUM_BLOCK); std::vector<float> partial(blocks * wdt);
    launch(column_partials, dim3{(unsigned)blocks, (unsigned)ceil_div(wdt, THREADS_PER_BLOCK), 1}, BLOCK, partial.data(), (const float*)x.data(), n, wdt, ROWS_PER_SUM_BLOCK);
    launch(sum_partials, ew(wdt), BLOCK, out.data(), (const float*)partial.data(), blocks, wdt, wdt);
    write(out);
}

// attention B T C H DROP KEY THRESHOLD KEEP_SCALE: qkv (B,T,3C), dout (B,T,C)
//   → att (B,H,T,T), the probabilities the values take (att_drop when DROP, else att), out (B,T,C), dqkv (B,T,3C)
static void run_attention() {
    int b = arg<int>(2), t = arg<int>(3), c = arg<int>(4), h = arg<int>(5), drop = arg<int>(6); int hs = c / h; float scale = 1 / std::sqrt((float)hs);
    u64 key = arg<u64>(7); u32 thr = arg<u32>(8); float keep = arg<float>(9);
    auto qkv = read<float>(b * t * 3 * c), dy = read<float>(b * t * c);
    int tt = b * h * t * t; std::vector<float> att(tt), ad(tt), out(b * t * c);
    launch(attention_forward_scores, ew(tt), BLOCK, att.data(), (const float*)qkv.data(), b, t, c, h, scale);
    launch(attention_forward_softmax, rows_cfg(b * h * t), BLOCK, att.data(), ad.data(), b * h * t, t, drop, key, thr, keep);
    const float* probs = drop ? ad.data() : att.data();
    launch(attention_forward_values, ew(b * t * c), BLOCK, out.data(), probs, (const float*)qkv.data(), b, t, c, h);
    std::vector<float> datt(tt), dqkv(b * t * 3 * c);
    launch(attention_backward_dprobs, ew(tt), BLOCK, datt.data(), (const float*)dy.data(), (const float*)qkv.data(), b, t, c, h, drop, key, thr, keep);
    launch(attention_backward_dscores, rows_cfg(b * h * t), BLOCK, datt.data(), (const float*)att.data(), b * h * t, t, scale);
    launch(attention_backward_dqkv, ew(b * t * c), BLOCK, dqkv.data(), (const float*)datt.data(), probs, (const float*)dy.data(), (const float*)qkv.data(), b, t, c, h);
    write(att); write(drop ? ad : att); write(out); write(dqkv);
}

// activation N W KIND (0 GELU, 1 ReLU): x (N), dout (N), bias (W) → y (N), dx (N)
static void run_activation() {
    long long n = arg<long long>(2); int w = arg<int>(3), kind = arg<int>(4);
    auto x = read<float>(n), d = read<float>(n), bias = read<float>(w); std::vector<float> y(n), g(n);
    launch(activation_forward, ew(n), BLOCK, y.data(), (const float*)x.data(), (const float*)bias.data(), n, w, kind);
    launch(activation_backward, ew(n), BLOCK, g.data(), (const float*)d.data(), (const float*)x.data(), (const float*)bias.data(), n, w, kind);
    write(y); write(g);
}

// residual N W KEY THRESHOLD KEEP_SCALE: x (N), branch (N), bias (W) → y (N), written over the branch
static void run_residual() {
    long long n = arg<long long>(2); int w = arg<int>(3); u64 key = arg<u64>(4); u32 thr = arg<u32>(5); float keep = arg<float>(6);
    auto x = read<float>(n), y = read<float>(n), bias = read<float>(w);
    launch(residual_forward, ew(n), BLOCK, y.data(), (const float*)x.data(), (const float*)bias.data(), n, w, key, thr, keep);
    write(y);
}

// dropout_backward N KEY THRESHOLD KEEP_SCALE: dout (N) → dinp (N)
static void run_dropout_backward() {
    long long n = arg<long long>(2); u64 key = arg<u64>(3); u32 thr = arg<u32>(4); float keep = arg<float>(5);
    auto d = read<float>(n); std::vector<float> g(n);
    launch(dropout_backward, ew(n), BLOCK, g.data(), (const float*)d.data(), n, key, thr, keep);
    write(g);
}

// crossentropy N V SCALE: logits (N,V), targets (N, u32), mask (N) → losses (N), probs (N,V), dlogits (N,V)
static void run_crossentropy() {
    int n = arg<int>(2), v = arg<int>(3); float scale = arg<float>(4);
    auto z = read<float>(n * v); auto tg = read<u32>(n); auto mask = read<float>(n);
    std::vector<float> loss(n), probs(n * v), dl(n * v);
    launch(crossentropy_forward, rows_cfg(n), BLOCK, loss.data(), probs.data(), (const float*)z.data(), (const u32*)tg.data(), (const float*)mask.data(), n, v);
    launch(crossentropy_backward, ew(n * v), BLOCK, dl.data(), (const float*)probs.data(), (const u32*)tg.data(), (const float*)mask.data(), scale, n, v);
    write(loss); write(probs); write(dl);
}

// sum_squares N: x (N) → the per-chunk partial sums (f64), which the host adds in order
static void run_sum_squares() {
    long long n = arg<long long>(2);
    auto x = read<float>(n); int chunks = ceil_div(n, SUM_SQUARES_CHUNK); std::vector<double> part(chunks);
    launch(sum_squares, dim3{(unsigned)chunks, 1, 1}, BLOCK, part.data(), (const float*)x.data(), n, SUM_SQUARES_CHUNK);
    write(part);
}

// adamw N B1 B2 ONE_B1 ONE_B2 LR EPS GRAD_SCALE BC1 BC2 DECAY: params, grads, m, v (N each) → params, m, v
static void run_adamw() {
    long long n = arg<long long>(2);
    float b1 = arg<float>(3), b2 = arg<float>(4), ob1 = arg<float>(5), ob2 = arg<float>(6), lr = arg<float>(7), eps = arg<float>(8), gs = arg<float>(9), bc1 = arg<float>(10), bc2 = arg<float>(11), decay = arg<float>(12);
    auto p = read<float>(n), g = read<float>(n), m = read<float>(n), v = read<float>(n);
    launch(adamw_update, ew(n), BLOCK, p.data(), (const float*)g.data(), m.data(), v.data(), n, b1, b2, ob1, ob2, lr, eps, gs, bc1, bc2, decay);
    write(p); write(m); write(v);
}

int main(int argc, char** argv) {
    argc_ = argc; argv_ = argv;
    const std::pair<std::string, void (*)()> cases[] = {
        {"encoder", run_encoder}, {"soft_prompt", run_soft_prompt}, {"layernorm", run_layernorm}, {"matmul", run_matmul}, {"bias_grad", run_bias_grad},
        {"attention", run_attention}, {"activation", run_activation}, {"residual", run_residual},
        {"dropout_backward", run_dropout_backward}, {"crossentropy", run_crossentropy}, {"sum_squares", run_sum_squares},
        {"adamw", run_adamw},
    };
    auto name = arg<std::string>(1);
    auto it = std::find_if(std::begin(cases), std::end(cases), [&](auto& c) { return c.first == name; });
    if (it == std::end(cases)) die("no case " + name);
    it->second();
    if (fgetc(stdin) != EOF) die("inputs left unread by " + name);
    return 0;
}

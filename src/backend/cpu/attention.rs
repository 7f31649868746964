//! Causal self-attention on the CPU, one (batch row, head) at a time.
//!
//! The products inside a head are short (T up to a few hundred, head size
//! 16 to 64), too short for a general matrix library: its per-call packing
//! costs more than the arithmetic. Here they are register tiles over the
//! causal triangle, and each head's softmax runs on rows still in cache.
//! The probabilities never leave the thread's scratch: the backward pass
//! computes them again, the same bits by the same code, from q, k and each
//! row's saved maximum and normalizer, rather than storing a (T,T) block
//! per head (B·H·T² floats per layer written to memory in the forward pass
//! and read back in the backward: as slow as computing them again, and the
//! largest buffer of a long-context model). Every head function is built
//! twice, for 8-lane vectors and for AVX-512, with the same operations in
//! the same order (so the same bits).

use rayon::prelude::*;

use super::{CpuBackend, SharedMut, Strided, dot, max, scratch_slot, scratch_slots, sum};
use crate::backend::{Dropout, Heads};
use crate::float::Float;

/// The attention op's forward (see `Backend::attention_forward`): heads in
/// parallel, each with its own slot of the backend's scratch. What the
/// backward pass needs besides q, k and v is each softmax row's maximum and
/// 1/Σ, 2·B·H·T values, into `saved` (the op's state).
pub(super) fn forward<F: Float>(
    cpu: &CpuBackend<F>,
    out: &mut [F],
    saved: &mut [F],
    qkv: &[F],
    shape: Heads,
    dropout: Dropout,
) {
    let Heads { b, t, c, h } = shape;
    assert!(qkv.len() >= b * t * 3 * c && out.len() >= b * t * c && saved.len() >= b * h * 2 * t);
    let mut scratch = cpu.scratch(HeadSet::<F>::scratch_len(t, c, h));
    let heads = HeadSet::new(t, c, h, dropout, &mut scratch, cpu.avx512);
    let out = SharedMut(out.as_mut_ptr());
    saved[..b * h * 2 * t].par_chunks_mut(2 * t).enumerate().for_each(|(bh, stats)| unsafe {
        if heads.wide {
            head_forward_avx512(&heads, bh, out, stats, qkv);
        } else {
            head_forward::<F, 4>(&heads, bh, out, stats, qkv);
        }
    });
}

/// The attention op's backward (see `Backend::attention_backward`), laid
/// out as `forward`.
pub(super) fn backward<F: Float>(
    cpu: &CpuBackend<F>,
    dqkv: &mut [F],
    dout: &[F],
    saved: &[F],
    qkv: &[F],
    shape: Heads,
    dropout: Dropout,
) {
    let Heads { b, t, c, h } = shape;
    assert!(
        dqkv.len() >= b * t * 3 * c
            && dout.len() >= b * t * c
            && qkv.len() >= b * t * 3 * c
            && saved.len() >= b * h * 2 * t
    );
    let mut scratch = cpu.scratch(HeadSet::<F>::scratch_len(t, c, h));
    let heads = HeadSet::new(t, c, h, dropout, &mut scratch, cpu.avx512);
    let dqkv = SharedMut(dqkv.as_mut_ptr());
    (0..b * h).into_par_iter().for_each(|bh| unsafe {
        if heads.wide {
            head_backward_avx512(&heads, bh, dqkv, dout, &saved[bh * 2 * t..(bh + 1) * 2 * t], qkv);
        } else {
            head_backward::<F, 4>(&heads, bh, dqkv, dout, &saved[bh * 2 * t..(bh + 1) * 2 * t], qkv);
        }
    });
}

/// Output columns per attention tile: two 8-lane vectors of f32, or one
/// 16-lane vector. A tile also has R rows: 4 with 8-lane vectors, 8 with
/// 16-lane ones, so 8 vector accumulators, enough independent chains to keep
/// both FMA units busy and few enough to stay in registers.
const TILE_COLS: usize = 16;
/// Output columns per tile in the products whose width is the head size:
/// twice TILE_COLS, so each broadcast of the left operand feeds two vectors.
const WIDE_TILE_COLS: usize = 32;

/// The operands of a small product dst = scale · lhs · rhs whose rhs rows
/// are contiguous (element (k, j) at `rhs + k·rhs_rs + j`), as are dst's.
#[derive(Clone, Copy)]
struct SmallProduct<F> {
    dst: *mut F,
    dst_rs: usize,
    lhs: Strided<F>,
    rhs: *const F,
    rhs_rs: usize,
    scale: F,
}

impl<F: Float> SmallProduct<F> {
    /// dst[i0+r, j0+c] = scale · Σ_{k ∈ ks} lhs(i0+r, k) · rhs(k, j0+c) for
    /// r < R, c < C: the R·C sums stay in registers for the whole reduction
    /// and each runs over k in increasing order.
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(&self, i0: usize, j0: usize, ks: std::ops::Range<usize>) {
        let mut acc = [[F::zero(); C]; R];
        unsafe {
            for k in ks {
                let row = self.rhs.add(k * self.rhs_rs + j0);
                let b: [F; C] = std::array::from_fn(|c| *row.add(c));
                for (r, sums) in acc.iter_mut().enumerate() {
                    let a = *self.lhs.ptr.add((i0 + r) * self.lhs.rs + k * self.lhs.cs);
                    for (s, &b) in sums.iter_mut().zip(&b) {
                        *s = a.mul_add(b, *s);
                    }
                }
            }
            for (r, sums) in acc.iter().enumerate() {
                // One C-wide store (a loop of element stores compiles to
                // scalar stores from the accumulators spilled to the stack).
                let out = self.dst.add((i0 + r) * self.dst_rs + j0).cast::<[F; C]>();
                out.write_unaligned(sums.map(|s| s * self.scale));
            }
        }
    }

    /// Output rows [i0, i0+R), columns [0, n), summing over `ks`: tiles
    /// of COLS columns, then of TILE_COLS, then single columns.
    #[inline(always)]
    unsafe fn tile_row<const R: usize, const COLS: usize>(&self, i0: usize, n: usize, ks: std::ops::Range<usize>) {
        let mut j0 = 0;
        unsafe {
            while j0 + COLS <= n {
                self.tile::<R, COLS>(i0, j0, ks.clone());
                j0 += COLS;
            }
            while j0 + TILE_COLS <= n {
                self.tile::<R, TILE_COLS>(i0, j0, ks.clone());
                j0 += TILE_COLS;
            }
            for j in j0..n {
                self.tile::<R, 1>(i0, j, ks.clone());
            }
        }
    }

    /// All m output rows, R at a time: row block [i0, i1) writes columns
    /// [0, width(i1)) and sums over k ∈ reduce(i0, i1), which is how the
    /// causal products skip the zeros above the diagonal.
    #[inline(always)]
    unsafe fn run<const R: usize, const COLS: usize>(
        &self,
        m: usize,
        width: impl Fn(usize) -> usize,
        reduce: impl Fn(usize, usize) -> std::ops::Range<usize>,
    ) {
        for i0 in (0..m).step_by(R) {
            let i1 = (i0 + R).min(m);
            let (n, ks) = (width(i1), reduce(i0, i1));
            unsafe {
                if i1 - i0 == R {
                    self.tile_row::<R, COLS>(i0, n, ks);
                } else {
                    for i in i0..i1 {
                        self.tile_row::<1, COLS>(i, n, ks.clone());
                    }
                }
            }
        }
    }
}

/// dst (k,T) = src (T,k)ᵀ, for a product operand that needs contiguous rows.
/// With `wide` (AVX-512 present) and 4-byte floats in rows, whole 16×16
/// blocks go through vector registers; the rest element by element. A
/// transpose only moves bits, so either way dst holds the same bits.
#[inline(always)]
unsafe fn transpose_into<F: Float>(t: usize, k: usize, dst: *mut F, src: Strided<F>, wide: bool) {
    let (rows_done, cols_done) = if cfg!(target_arch = "x86_64") && wide && std::mem::size_of::<F>() == 4 && src.cs == 1
    {
        // SAFETY: `wide` is set only where the CPU has AVX-512; F is f32.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            transpose_16x16_blocks(t - t % 16, k - k % 16, dst.cast(), t, src.ptr.cast(), src.rs)
        };
        (t - t % 16, k - k % 16)
    } else {
        (0, 0)
    };
    let move_one = |i: usize, d: usize| unsafe { *dst.add(d * t + i) = *src.ptr.add(i * src.rs + d * src.cs) };
    for i in 0..rows_done {
        (cols_done..k).for_each(|d| move_one(i, d));
    }
    for i in rows_done..t {
        (0..k).for_each(|d| move_one(i, d));
    }
}

/// dst (k,rows) = src (rows,k)ᵀ for `rows` and `k` whole multiples of 16,
/// in 16×16 blocks: sixteen source rows loaded, transposed in registers
/// (pairs of floats interleaved, then pairs of pairs, then 128-bit
/// quarters), stored as sixteen destination rows.
///
/// # Safety
/// The CPU must have AVX-512F; src rows are `rs` apart with contiguous
/// columns; dst rows are `dst_rs` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_16x16_blocks(rows: usize, k: usize, dst: *mut f32, dst_rs: usize, src: *const f32, rs: usize) {
    use std::arch::x86_64::*;
    for i0 in (0..rows).step_by(16) {
        for d0 in (0..k).step_by(16) {
            unsafe {
                let rows: [__m512; 16] = std::array::from_fn(|r| _mm512_loadu_ps(src.add((i0 + r) * rs + d0)));
                // cols[g][m], 128-bit quarter j: rows 4g..4g+4 at column 4j + m.
                let cols: [[__m512; 4]; 4] = std::array::from_fn(|g| {
                    let [a, b, c, d] = [rows[4 * g], rows[4 * g + 1], rows[4 * g + 2], rows[4 * g + 3]];
                    let (ab_lo, ab_hi) =
                        (_mm512_castps_pd(_mm512_unpacklo_ps(a, b)), _mm512_castps_pd(_mm512_unpackhi_ps(a, b)));
                    let (cd_lo, cd_hi) =
                        (_mm512_castps_pd(_mm512_unpacklo_ps(c, d)), _mm512_castps_pd(_mm512_unpackhi_ps(c, d)));
                    [
                        _mm512_castpd_ps(_mm512_unpacklo_pd(ab_lo, cd_lo)),
                        _mm512_castpd_ps(_mm512_unpackhi_pd(ab_lo, cd_lo)),
                        _mm512_castpd_ps(_mm512_unpacklo_pd(ab_hi, cd_hi)),
                        _mm512_castpd_ps(_mm512_unpackhi_pd(ab_hi, cd_hi)),
                    ]
                });
                #[allow(clippy::needless_range_loop)] // m picks the same column of all four groups
                for m in 0..4 {
                    // Quarters 0,1 (lo) and 2,3 (hi) of groups 0,1 and 2,3 side by side ...
                    let lo01 = _mm512_shuffle_f32x4::<0b01_00_01_00>(cols[0][m], cols[1][m]);
                    let hi01 = _mm512_shuffle_f32x4::<0b11_10_11_10>(cols[0][m], cols[1][m]);
                    let lo23 = _mm512_shuffle_f32x4::<0b01_00_01_00>(cols[2][m], cols[3][m]);
                    let hi23 = _mm512_shuffle_f32x4::<0b11_10_11_10>(cols[2][m], cols[3][m]);
                    // ... then quarter j of all four groups: column 4j + m, rows 0..16.
                    let out = [
                        _mm512_shuffle_f32x4::<0b10_00_10_00>(lo01, lo23),
                        _mm512_shuffle_f32x4::<0b11_01_11_01>(lo01, lo23),
                        _mm512_shuffle_f32x4::<0b10_00_10_00>(hi01, hi23),
                        _mm512_shuffle_f32x4::<0b11_01_11_01>(hi01, hi23),
                    ];
                    for (j, v) in out.into_iter().enumerate() {
                        _mm512_storeu_ps(dst.add((d0 + 4 * j + m) * dst_rs + i0), v);
                    }
                }
            }
        }
    }
}

/// The lower triangle of dst (T,T) = scale · lhs (T,k) · rhsᵀ (k,T), given
/// rhs (T,k) and scratch for its transpose: row block [i0, i1) gets columns
/// [0, i1) rounded up to a multiple of TILE_COLS, in tiles of WIDE_TILE_COLS
/// columns while they fit (twice the independent sums per broadcast), then
/// TILE_COLS. Entries above the diagonal are computed too where a tile
/// straddles it; callers ignore them. `wide`: the CPU has AVX-512 (for the
/// transpose).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn causal_scores<F: Float, const R: usize>(
    t: usize,
    k: usize,
    dst: *mut F,
    lhs: Strided<F>,
    rhs: Strided<F>,
    rhs_t: *mut F,
    scale: F,
    wide: bool,
) {
    unsafe {
        transpose_into(t, k, rhs_t, rhs, wide);
        SmallProduct { dst, dst_rs: t, lhs, rhs: rhs_t, rhs_rs: t, scale }.run::<R, WIDE_TILE_COLS>(
            t,
            |i1| i1.next_multiple_of(TILE_COLS).min(t),
            |_, _| 0..k,
        );
    }
}

/// dst (T,n) = a (T,T) · rhs (T,n) for a lower-triangular `a` (zero above
/// the diagonal): row block [i0, i1) sums over columns [0, i1) of `a`.
#[inline(always)]
unsafe fn causal_times<F: Float, const R: usize>(
    t: usize,
    n: usize,
    dst: *mut F,
    dst_rs: usize,
    a: Strided<F>,
    rhs: Strided<F>,
) {
    debug_assert_eq!(rhs.cs, 1);
    unsafe {
        SmallProduct { dst, dst_rs, lhs: a, rhs: rhs.ptr, rhs_rs: rhs.rs, scale: F::one() }.run::<R, WIDE_TILE_COLS>(
            t,
            |_| n,
            |_, i1| 0..i1,
        )
    }
}

/// dst (T,n) = aᵀ (T,T) · rhs (T,n) for a lower-triangular `a` (given as its
/// transpose `at`, upper-triangular): row block [i0, i1) sums over rows
/// [i0, T) of `a` only.
#[inline(always)]
unsafe fn causal_transposed_times<F: Float, const R: usize>(
    t: usize,
    n: usize,
    dst: *mut F,
    dst_rs: usize,
    at: Strided<F>,
    rhs: Strided<F>,
) {
    debug_assert_eq!(rhs.cs, 1);
    unsafe {
        SmallProduct { dst, dst_rs, lhs: at, rhs: rhs.ptr, rhs_rs: rhs.rs, scale: F::one() }.run::<R, WIDE_TILE_COLS>(
            t,
            |_| n,
            |i0, _| i0..t,
        )
    }
}

/// In-place causal softmax of a (T,T) score block: row i keeps columns
/// j ≤ i. Row i's maximum and 1/Σ go to stats[2i], stats[2i+1], for the
/// backward pass to compute the same probabilities again
/// (`causal_softmax_rows_again`) without the two passes that find them.
#[inline(always)]
fn causal_softmax_rows<F: Float>(block: &mut [F], t: usize, stats: &mut [F], wide: bool) {
    #[cfg(target_arch = "x86_64")]
    if let (true, Some(block), Some(stats)) = (wide, as_f32_mut(block), as_f32_mut(stats)) {
        // SAFETY: `wide` is set only where the CPU has AVX-512.
        return unsafe { softmax_avx512::causal_rows(block, t, stats) };
    }
    for (i, (row, stats)) in block.chunks_exact_mut(t).zip(stats.chunks_exact_mut(2)).enumerate() {
        let m = max(&row[..=i]);
        let padded = exp_shifted_row(row, i, m);
        let inv = F::one() / sum(&row[..padded]);
        row[..padded].iter_mut().for_each(|x| *x *= inv);
        (stats[0], stats[1]) = (m, inv);
    }
}

/// `causal_softmax_rows` from its saved statistics: the same operations on
/// the same values, so the same bits.
#[inline(always)]
fn causal_softmax_rows_again<F: Float>(block: &mut [F], t: usize, stats: &[F], wide: bool) {
    #[cfg(target_arch = "x86_64")]
    if let (true, Some(block), Some(stats)) = (wide, as_f32_mut(block), as_f32(stats)) {
        // SAFETY: as in `causal_softmax_rows`.
        return unsafe { softmax_avx512::causal_rows_again(block, t, stats) };
    }
    for (i, (row, stats)) in block.chunks_exact_mut(t).zip(stats.chunks_exact(2)).enumerate() {
        let padded = exp_shifted_row(row, i, stats[0]);
        row[..padded].iter_mut().for_each(|x| *x *= stats[1]);
    }
}

/// Row i of a causal block: x = e^(x − m) on j ≤ i, 0 past i; returns the
/// length of the whole 8-lane chunks covering 0..=i. The few entries past i
/// in them (the diagonal tile's upper part, finite) go through exp too and
/// are zeroed after, which is cheaper than a scalar tail on every row.
#[inline(always)]
fn exp_shifted_row<F: Float>(row: &mut [F], i: usize, m: F) -> usize {
    let padded = (i + 1).next_multiple_of(8).min(row.len());
    for x in &mut row[..padded] {
        *x = (*x - m).fast_exp();
    }
    row[i + 1..].fill(F::zero());
    padded
}

/// `x` as f32 slices, where F is f32 (the AVX-512 softmax's element type).
#[inline(always)]
fn as_f32<F: Float>(x: &[F]) -> Option<&[f32]> {
    // SAFETY: the only 4-byte Float is f32.
    (std::mem::size_of::<F>() == 4).then(|| unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) })
}

/// `as_f32` for a mutable slice.
#[inline(always)]
fn as_f32_mut<F: Float>(x: &mut [F]) -> Option<&mut [f32]> {
    // SAFETY: as in `as_f32`.
    (std::mem::size_of::<F>() == 4).then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast(), x.len()) })
}

/// The causal softmax rows in 16-lane vectors with masked loads and stores
/// for each row's ragged end: the same operations on every element as
/// `causal_softmax_rows` and `causal_softmax_rows_again` (the same `exp_f32`
/// steps, the same eight running sums, combined in the same order), so the
/// same bits, without the scalar tails and the branches on each row's
/// length that the compiler's version of those loops takes.
#[cfg(target_arch = "x86_64")]
mod softmax_avx512 {
    use std::arch::x86_64::*;

    /// Lanes [0, n) of a 16-lane vector, for n ≤ 16.
    #[inline(always)]
    fn first(n: usize) -> __mmask16 {
        if n >= 16 { 0xffff } else { (1u16 << n) - 1 }
    }

    /// e^x lane by lane, the steps of `crate::float::exp_f32` in the same order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        use crate::float::exp_f32_steps::*;
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(LOWEST)), _mm512_set1_ps(HIGHEST));
        let shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), _mm512_set1_ps(ROUND));
        let k = _mm512_sub_ps(shifted, _mm512_set1_ps(ROUND));
        // −k·c + x: the product's sign, so the rounding, as (−k)·c + x.
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_LO), _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_HI), x));
        let mut p = _mm512_set1_ps(TAYLOR_LEAD);
        for c in TAYLOR {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let k_int = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(ROUND.to_bits() as i32));
        _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(k_int, _mm512_set1_epi32(127)))))
    }

    /// Row i (`n` = i+1 entries kept) of a causal block of rows of `t`:
    /// x = e^(x − m) on j < n, times `times` if given, and 0 past n, over
    /// the whole row. Without `times`, returns Σ e^(x − m) over the row's
    /// first `padded` entries in `sum`'s order (eight running sums over
    /// chunks of eight, combined pairwise, then the tail); with it, 0.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn exp_shifted_row(row: *mut f32, t: usize, n: usize, m: f32, times: Option<f32>) -> f32 {
        let summed = times.is_none();
        let padded = n.next_multiple_of(8).min(t);
        let whole_eights = padded / 8 * 8;
        let m = _mm512_set1_ps(m);
        let mut acc = _mm256_setzero_ps();
        for j in (0..t).step_by(16) {
            let in_row = first(t - j);
            let mut x = if j < n {
                let x = exp(_mm512_sub_ps(unsafe { _mm512_maskz_loadu_ps(in_row, row.add(j)) }, m));
                _mm512_maskz_mov_ps(first(n - j), x)
            } else {
                _mm512_setzero_ps()
            };
            if summed && j < whole_eights {
                // +0 past the row's end leaves the (positive) sums as they are.
                let x = _mm512_maskz_mov_ps(first(whole_eights - j), x);
                acc = _mm256_add_ps(acc, _mm512_castps512_ps256(x));
                acc = _mm256_add_ps(acc, _mm512_extractf32x8_ps::<1>(x));
            }
            if let Some(s) = times {
                x = _mm512_mul_ps(x, _mm512_set1_ps(s));
            }
            unsafe { _mm512_mask_storeu_ps(row.add(j), in_row, x) };
        }
        if !summed {
            return 0.0;
        }
        let a: [f32; 8] = unsafe { std::mem::transmute(acc) };
        let mut total = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
        for j in whole_eights..padded {
            total += unsafe { *row.add(j) };
        }
        total
    }

    /// The largest of row[..n] (NaN-free; a max is the same in any order).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_max(row: *const f32, n: usize) -> f32 {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for j in (0..n).step_by(16) {
            m = _mm512_max_ps(m, unsafe { _mm512_mask_loadu_ps(m, first(n - j), row.add(j)) });
        }
        _mm512_reduce_max_ps(m)
    }

    /// row[j] *= s for j < n (entries past n are 0 and stay so).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn scale_row(row: *mut f32, n: usize, s: f32) {
        let s = _mm512_set1_ps(s);
        for j in (0..n).step_by(16) {
            let lanes = first(n - j);
            unsafe {
                _mm512_mask_storeu_ps(row.add(j), lanes, _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, row.add(j)), s))
            };
        }
    }

    /// Rows handled a step at a time before the next step: each row's
    /// steps depend on each other (maximum, exponentials and their sum, 1/Σ,
    /// scaling), rows do not, so a group's rows keep the pipelines full
    /// while staying in L1.
    const ROW_GROUP: usize = 16;

    /// `super::causal_softmax_rows` for f32 blocks.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `block` holds T rows of T, `stats` 2T.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn causal_rows(block: &mut [f32], t: usize, stats: &mut [f32]) {
        assert!(block.len() >= t * t && stats.len() >= 2 * t);
        let first_row = block.as_mut_ptr();
        let row = |i: usize| unsafe { first_row.add(i * t) };
        for g in (0..t).step_by(ROW_GROUP) {
            let rows = g..(g + ROW_GROUP).min(t);
            for i in rows.clone() {
                stats[2 * i] = unsafe { row_max(row(i), i + 1) };
            }
            for i in rows.clone() {
                stats[2 * i + 1] = unsafe { exp_shifted_row(row(i), t, i + 1, stats[2 * i], None) };
            }
            for i in rows.clone() {
                stats[2 * i + 1] = 1.0 / stats[2 * i + 1];
            }
            for i in rows {
                unsafe { scale_row(row(i), i + 1, stats[2 * i + 1]) };
            }
        }
    }

    /// `super::causal_softmax_rows_again` for f32 blocks.
    ///
    /// # Safety
    /// As `causal_rows`.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn causal_rows_again(block: &mut [f32], t: usize, stats: &[f32]) {
        assert!(block.len() >= t * t && stats.len() >= 2 * t);
        for i in 0..t {
            unsafe { exp_shifted_row(block.as_mut_ptr().add(i * t), t, i + 1, stats[2 * i], Some(stats[2 * i + 1])) };
        }
    }
}

/// One attention call as each of its heads sees it: the shape they share,
/// the scores' scale, dropout and the scratch.
struct HeadSet<F> {
    t: usize,
    c: usize,
    h: usize,
    hs: usize,
    scale: F,
    dropout: Dropout,
    /// Per-thread scratch (see `scratch_slot`): a transposed (hs,T) operand
    /// and two (T,T) blocks, in each slot.
    scratch: SharedMut<F>,
    /// Run the AVX-512 build of the head functions.
    wide: bool,
}

impl<F: Float> HeadSet<F> {
    /// `scratch` must hold `scratch_len(t, c, h)` elements and outlive the heads.
    fn new(t: usize, c: usize, h: usize, dropout: Dropout, scratch: &mut [F], wide: bool) -> Self {
        let hs = c / h;
        assert!(scratch.len() >= Self::scratch_len(t, c, h));
        HeadSet {
            t,
            c,
            h,
            hs,
            scale: F::of(1.0 / (hs as f64).sqrt()),
            dropout,
            scratch: SharedMut(scratch.as_mut_ptr()),
            wide,
        }
    }

    fn slot_len(t: usize, c: usize, h: usize) -> usize {
        (c / h) * t + 2 * t * t + t
    }

    fn scratch_len(t: usize, c: usize, h: usize) -> usize {
        scratch_slots() * Self::slot_len(t, c, h)
    }

    /// This thread's scratch: the (hs,T) block for a transposed operand, the
    /// (T,T) blocks for the probabilities and for the score gradients, and a
    /// row of T for one row's dropout factors.
    ///
    /// # Safety
    /// At most one head on this thread may hold the slot at a time (each
    /// thread has its own slot, see `scratch_slot`).
    #[allow(clippy::mut_from_ref)] // per-thread scratch behind a shared handle
    unsafe fn slot(&self) -> (*mut F, &mut [F], &mut [F], &mut [F]) {
        let (hs, t) = (self.hs, self.t);
        let first = self.scratch.at(scratch_slot() * Self::slot_len(t, self.c, self.h));
        let block = |offset: usize, len: usize| unsafe { std::slice::from_raw_parts_mut(first.add(offset), len) };
        // SAFETY (of the blocks): the slot's slot_len elements lie inside the
        // scratch `new` was given; the blocks do not overlap.
        (first, block(hs * t, t * t), block(hs * t + t * t, t * t), block(hs * t + 2 * t * t, t))
    }

    /// Row i of head `bh`'s dropout factors, factors[j] for j ≤ i (the
    /// mask's elements numbered as the op's (B,H,T,T) layout).
    #[inline(always)]
    fn mask_row(&self, bh: usize, i: usize, factors: &mut [F]) {
        let t = self.t;
        for (j, f) in factors[..=i].iter_mut().enumerate() {
            *f = self.dropout.factor::<F>((bh * t + i) * t + j);
        }
    }
}

/// row[j] *= factors[j] over the shorter of the two.
#[inline(always)]
fn times_factors<F: Float>(row: &mut [F], factors: &[F]) {
    row.iter_mut().zip(factors).for_each(|(x, &f)| *x *= f);
}

/// Head `bh`'s causal scores scale · q kᵀ into `p` (T,T), lower triangle,
/// with `kt` as scratch for kᵀ.
#[inline(always)]
unsafe fn head_scores<F: Float, const R: usize>(heads: &HeadSet<F>, bh: usize, qkv: &[F], p: &mut [F], kt: *mut F) {
    let HeadSet { t, c, h, hs, scale, .. } = *heads;
    let q = qkv[(bh / h) * t * 3 * c + (bh % h) * hs..].as_ptr();
    unsafe {
        causal_scores::<F, R>(
            t,
            hs,
            p.as_mut_ptr(),
            Strided { ptr: q, rs: 3 * c, cs: 1 },
            Strided { ptr: q.add(c), rs: 3 * c, cs: 1 },
            kt,
            scale,
            heads.wide,
        )
    };
}

/// One head's forward: out[b, :, head] (T,hs) = dropout(probs) · v, the
/// probabilities in the thread's scratch and their rows' softmax statistics
/// in `stats` (2T). R output rows per product tile.
///
/// # Safety
/// `out` must be the op's buffer; each head writes its own part.
#[inline(always)]
unsafe fn head_forward<F: Float, const R: usize>(
    heads: &HeadSet<F>,
    bh: usize,
    out: SharedMut<F>,
    stats: &mut [F],
    qkv: &[F],
) {
    let HeadSet { t, c, h, hs, dropout, .. } = *heads;
    let (bi, hi) = (bh / h, bh % h);
    let (kt, p, _, factors) = unsafe { heads.slot() };
    unsafe { head_scores::<F, R>(heads, bh, qkv, p, kt) };
    causal_softmax_rows(p, t, stats, heads.wide);
    if dropout.active() {
        for (i, row) in p.chunks_exact_mut(t).enumerate() {
            heads.mask_row(bh, i, factors);
            times_factors(&mut row[..=i], factors);
        }
    }
    let v = qkv[bi * t * 3 * c + 2 * c + hi * hs..].as_ptr();
    // out[b, :, head] (T,hs) = probs (T,T) · v (T,hs)
    unsafe {
        causal_times::<F, R>(
            t,
            hs,
            out.at(bi * t * c + hi * hs),
            c,
            Strided { ptr: p.as_ptr(), rs: t, cs: 1 },
            Strided { ptr: v, rs: 3 * c, cs: 1 },
        )
    };
}

/// One head's backward: dq, dk, dv of the head are written into dqkv; the
/// probabilities (computed again from the forward's `stats`) and the score
/// gradients ds live in the thread's scratch slot.
///
/// # Safety
/// `dqkv` must be the op's buffer; each head writes its own part.
#[inline(always)]
unsafe fn head_backward<F: Float, const R: usize>(
    heads: &HeadSet<F>,
    bh: usize,
    dqkv: SharedMut<F>,
    dout: &[F],
    stats: &[F],
    qkv: &[F],
) {
    let HeadSet { t, c, h, hs, scale, dropout, .. } = *heads;
    let (bi, hi) = (bh / h, bh % h);
    let base = bi * t * 3 * c + hi * hs;
    let dy = dout[bi * t * c + hi * hs..].as_ptr();
    let (transposed, p, ds, factors) = unsafe { heads.slot() };
    unsafe {
        head_scores::<F, R>(heads, bh, qkv, p, transposed);
        causal_softmax_rows_again(p, t, stats, heads.wide);
        let v = qkv.as_ptr().add(base + 2 * c);
        // d(probs after dropout) (T,T) = dy (T,hs) · vᵀ (hs,T), lower triangle
        causal_scores::<F, R>(
            t,
            hs,
            ds.as_mut_ptr(),
            Strided { ptr: dy, rs: c, cs: 1 },
            Strided { ptr: v, rs: 3 * c, cs: 1 },
            transposed,
            F::one(),
            heads.wide,
        );
    }
    // through dropout, then the softmax: ds = p ⊙ (dp − Σⱼ p·dp) · scale on
    // j ≤ i; with dropout, each row's factors are hashed once and scale both
    // dp and, after its use here, p (for dv below).
    for i in 0..t {
        let row = &mut ds[i * t..(i + 1) * t];
        let prow = &mut p[i * t..(i + 1) * t];
        if dropout.active() {
            heads.mask_row(bh, i, factors);
            times_factors(&mut row[..=i], factors);
        }
        let dp = dot(&row[..=i], &prow[..=i]);
        for (x, &p) in row[..=i].iter_mut().zip(&prow[..=i]) {
            *x = p * (*x - dp) * scale;
        }
        row[i + 1..].fill(F::zero());
        if dropout.active() {
            times_factors(&mut prow[..=i], factors);
        }
    }
    unsafe {
        let q = qkv.as_ptr().add(base);
        let k = q.add(c);
        // dq (T,hs) = ds (T,T) · k (T,hs)
        causal_times::<F, R>(
            t,
            hs,
            dqkv.at(base),
            3 * c,
            Strided { ptr: ds.as_ptr(), rs: t, cs: 1 },
            Strided { ptr: k, rs: 3 * c, cs: 1 },
        );
        // dk (T,hs) = dsᵀ (T,T) · q (T,hs)
        causal_transposed_times::<F, R>(
            t,
            hs,
            dqkv.at(base + c),
            3 * c,
            Strided { ptr: ds.as_ptr(), rs: 1, cs: t },
            Strided { ptr: q, rs: 3 * c, cs: 1 },
        );
        // dv (T,hs) = (probs after dropout)ᵀ (T,T) · dy (T,hs)
        causal_transposed_times::<F, R>(
            t,
            hs,
            dqkv.at(base + 2 * c),
            3 * c,
            Strided { ptr: p.as_ptr(), rs: 1, cs: t },
            Strided { ptr: dy, rs: c, cs: 1 },
        );
    }
}

/// `head_forward` compiled for AVX-512: 16-lane vectors, 8-row tiles. The
/// same operations in the same order, so the same bits as the 8-lane build.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl"))]
unsafe fn head_forward_avx512<F: Float>(heads: &HeadSet<F>, bh: usize, out: SharedMut<F>, stats: &mut [F], qkv: &[F]) {
    unsafe { head_forward::<F, 8>(heads, bh, out, stats, qkv) }
}

/// `head_backward` compiled for AVX-512, as `head_forward_avx512`.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl"))]
unsafe fn head_backward_avx512<F: Float>(
    heads: &HeadSet<F>,
    bh: usize,
    dqkv: SharedMut<F>,
    dout: &[F],
    stats: &[F],
    qkv: &[F],
) {
    unsafe { head_backward::<F, 8>(heads, bh, dqkv, dout, stats, qkv) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_in_blocks_and_by_element_agree() {
        if !super::super::has_avx512() {
            return;
        }
        for (t, k, rs) in [(37, 16, 48), (33, 20, 60), (128, 32, 192), (16, 16, 16), (9, 8, 24)] {
            let src: Vec<f32> = (0..t * rs).map(|i| i as f32).collect();
            let mut wide = vec![-1.0f32; k * t];
            let mut plain = vec![-1.0f32; k * t];
            unsafe {
                transpose_into(t, k, wide.as_mut_ptr(), Strided { ptr: src.as_ptr(), rs, cs: 1 }, true);
                transpose_into(t, k, plain.as_mut_ptr(), Strided { ptr: src.as_ptr(), rs, cs: 1 }, false);
            }
            for d in 0..k {
                for i in 0..t {
                    assert_eq!(plain[d * t + i], src[i * rs + d]);
                }
            }
            assert_eq!(wide, plain, "t {t} k {k}");
        }
    }
}

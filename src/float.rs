//! The float type the CPU code is generic over: f32 for training, f64 for
//! gradient checks against finite differences.

use std::fmt::{Debug, Display};
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

pub trait Float:
    num_traits::Float
    + Send
    + Sync
    + Default
    + Debug
    + Display
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + std::iter::Sum
    + 'static
{
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
    /// e^x for the softmaxes and GELU: a branch-free polynomial for f32 that
    /// the compiler vectorizes (within 2 ulp), libm's exp for f64.
    fn fast_exp(self) -> Self;
    /// Little-endian bytes, for fingerprints and checkpoints.
    fn write_le(self, out: &mut Vec<u8>);
}

impl Float for f32 {
    #[inline]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn fast_exp(self) -> Self {
        exp_f32(self)
    }
    #[inline]
    fn f64(self) -> f64 {
        self as f64
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Float for f64 {
    #[inline]
    fn of(x: f64) -> Self {
        x
    }
    #[inline]
    fn fast_exp(self) -> Self {
        self.exp()
    }
    #[inline]
    fn f64(self) -> f64 {
        self
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// e^x in f32 without branches or libm: x = k·ln2 + r with |r| ≤ ln2/2,
/// e^r by its degree-7 Taylor polynomial (truncation < 1e-8 relative), and
/// 2^k written into the exponent bits. Fused multiply-adds throughout (the
/// build targets CPUs with FMA), which also round less. Inputs below −87 give about 1e-38
/// instead of 0; above 88 they saturate at about 1.6e38 instead of ∞.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    use exp_f32_steps::*;
    let x = x.clamp(LOWEST, HIGHEST);
    let shifted = x.mul_add(LOG2E, ROUND);
    let k = shifted - ROUND;
    let r = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, x));
    // Horner's rule in fused multiply-adds: one instruction per coefficient.
    let p = TAYLOR.iter().fold(TAYLOR_LEAD, |p: f32, &c| p.mul_add(r, c));
    let k_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    p * f32::from_bits(((k_int + 127) << 23) as u32)
}

/// The constants of `exp_f32`, for its vector builds to take the same steps.
pub(crate) mod exp_f32_steps {
    pub const LOWEST: f32 = -87.0;
    pub const HIGHEST: f32 = 88.0;
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_145_75; // ln 2 split so k·LN2_HI is exact
    pub const LN2_LO: f32 = 1.428_606_8e-6;
    pub const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    /// e^r's Taylor coefficients, highest first: 1/7!, then the rest.
    pub const TAYLOR_LEAD: f32 = 1.0 / 5040.0;
    pub const TAYLOR: [f32; 7] = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    #[test]
    fn exp_f32_is_within_two_ulp_of_libm_over_the_softmax_range() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_f32(x), (x as f64).exp());
            let rel = ((got as f64 - want) / want).abs();
            assert!(rel < 2.5e-7, "exp({x}) = {got}, want {want} (relative error {rel:e})");
            x += 0.0137;
        }
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37);
    }
}

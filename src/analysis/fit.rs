//! Least-squares fits of retention curves:
//!
//! - exponential: r(Δ) = r∞ + (1 − r∞)·exp(−Δ/τ)
//! - power law:   r(Δ) = r∞ + (1 − r∞)·(1 + Δ/τ)^(−β)
//!
//! For fixed shape parameters the model is linear in r∞, whose best value
//! in its range has a closed form; the shape parameters (ln τ, ln β) are
//! found by a grid search refined with Nelder–Mead. Every parameter is
//! searched inside a range the data can identify:
//!
//! - r∞ in [−0.5, 1] (retention is 0 at chance, 1 at the drop);
//! - τ from the first positive Δ to 10× the last Δ;
//! - β in [0.1, 10] (beyond, the power law is an exponential in disguise).
//!
//! Each fit gets a status: `too_few_points` (fewer than 5 points for the
//! exponential, 6 for the power law: AICc needs n > k + 1), `no_decay` (the
//! fitted curve loses less than a tenth of the learned gap over the
//! window), `at_bound` (a parameter's optimum sits on its range's edge, so
//! the data do not identify it) or `ok`. Only `ok` fits enter means and
//! scaling fits. Both forms report the residual sum of squares and AICc,
//! n·ln(RSS/n) + 2k + 2k(k+1)/(n−k−1), with k counting the noise variance.

use serde::{Deserialize, Serialize};

/// The range of r∞.
pub const R_INF_RANGE: (f64, f64) = (-0.5, 1.0);
/// The range of the power law's β.
pub const BETA_RANGE: (f64, f64) = (0.1, 10.0);
/// τ may reach this many times the last Δ.
pub const TAU_MAX_OVER_WINDOW: f64 = 10.0;
/// A fitted curve that loses less than this share of the learned gap over
/// its window shows no decay.
pub const NO_DECAY: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    Exponential,
    Power,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Exponential => "exponential",
            Form::Power => "power",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitStatus {
    Ok,
    AtBound,
    NoDecay,
    TooFewPoints,
}

impl FitStatus {
    pub fn name(self) -> &'static str {
        match self {
            FitStatus::Ok => "ok",
            FitStatus::AtBound => "at_bound",
            FitStatus::NoDecay => "no_decay",
            FitStatus::TooFewPoints => "too_few_points",
        }
    }
}

/// One fitted form; the parameters are absent with too few points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub form: Form,
    pub status: FitStatus,
    pub tau: Option<f64>,
    /// The power law's exponent (absent for the exponential).
    pub beta: Option<f64>,
    pub r_inf: Option<f64>,
    pub rss: Option<f64>,
    pub aicc: Option<f64>,
    pub points: usize,
}

impl Fit {
    /// The parameters, for a fit whose status is `ok`.
    pub fn ok(&self) -> Option<&Fit> {
        (self.status == FitStatus::Ok).then_some(self)
    }

    /// r(Δ) under this fit.
    pub fn curve(&self, d: f64) -> Option<f64> {
        let (tau, r_inf) = (self.tau?, self.r_inf?);
        let g = match self.form {
            Form::Exponential => exp_shape(d, tau),
            Form::Power => power_shape(d, tau, self.beta?),
        };
        Some(r_inf + (1.0 - r_inf) * g)
    }
}

/// g(Δ) for the exponential form.
fn exp_shape(d: f64, tau: f64) -> f64 {
    (-d / tau).exp()
}

/// g(Δ) for the power-law form.
fn power_shape(d: f64, tau: f64, beta: f64) -> f64 {
    (1.0 + d / tau).powf(-beta)
}

/// Best r∞ and the RSS for a fixed shape g: r = g + r∞·(1 − g).
fn solve_r_inf(points: &[(f64, f64)], g: impl Fn(f64) -> f64) -> (f64, f64) {
    let (mut num, mut den) = (0.0, 0.0);
    for &(d, r) in points {
        let gd = g(d);
        num += (r - gd) * (1.0 - gd);
        den += (1.0 - gd) * (1.0 - gd);
    }
    // The RSS is a parabola in r∞: the best value in range is the free optimum, clamped.
    let r_inf = if den > 0.0 { (num / den).clamp(R_INF_RANGE.0, R_INF_RANGE.1) } else { R_INF_RANGE.1 };
    let rss = points
        .iter()
        .map(|&(d, r)| {
            let gd = g(d);
            let e = r - (gd + r_inf * (1.0 - gd));
            e * e
        })
        .sum();
    (r_inf, rss)
}

/// AICc of a least-squares fit with `k` parameters (the noise variance
/// included); None when n ≤ k + 1, where it is undefined.
fn aicc(rss: f64, n: usize, k: usize) -> Option<f64> {
    (n > k + 1).then(|| {
        n as f64 * (rss / n as f64).max(1e-300).ln() + 2.0 * k as f64 + 2.0 * (k * (k + 1)) as f64 / (n - k - 1) as f64
    })
}

/// Nelder–Mead minimisation of `f` from `start` with initial step `step`.
pub(crate) fn nelder_mead<const N: usize>(
    f: impl Fn([f64; N]) -> f64,
    start: [f64; N],
    step: f64,
    iters: usize,
) -> [f64; N] {
    let mut simplex: Vec<([f64; N], f64)> = (0..=N)
        .map(|i| {
            let mut x = start;
            if i > 0 {
                x[i - 1] += step;
            }
            (x, f(x))
        })
        .collect();
    for _ in 0..iters {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let worst = simplex[N];
        let mut centroid = [0.0; N];
        for (x, _) in &simplex[..N] {
            for k in 0..N {
                centroid[k] += x[k] / N as f64;
            }
        }
        let along = |t: f64| {
            let mut x = [0.0; N];
            for k in 0..N {
                x[k] = centroid[k] + t * (worst.0[k] - centroid[k]);
            }
            x
        };
        let reflected = along(-1.0);
        let fr = f(reflected);
        if fr < simplex[0].1 {
            let expanded = along(-2.0);
            let fe = f(expanded);
            simplex[N] = if fe < fr { (expanded, fe) } else { (reflected, fr) };
        } else if fr < simplex[N - 1].1 {
            simplex[N] = (reflected, fr);
        } else {
            let contracted = along(0.5);
            let fc = f(contracted);
            if fc < worst.1 {
                simplex[N] = (contracted, fc);
            } else {
                let best = simplex[0].0;
                for (x, fx) in simplex.iter_mut().skip(1) {
                    for k in 0..N {
                        x[k] = best[k] + 0.5 * (x[k] - best[k]);
                    }
                    *fx = f(*x);
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex[0].0
}

/// The range of ln τ: from the smallest positive Δ to
/// `TAU_MAX_OVER_WINDOW` times the largest.
fn log_tau_range(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let min = points.iter().map(|p| p.0).filter(|&d| d > 0.0).fold(f64::INFINITY, f64::min);
    let max = points.iter().map(|p| p.0).fold(0.0, f64::max);
    (min.is_finite() && max > 0.0).then(|| (min.ln(), (max * TAU_MAX_OVER_WINDOW).ln()))
}

/// Whether `x` sits on the edge of [lo, hi] (within 1% of the range).
fn on_edge(x: f64, (lo, hi): (f64, f64)) -> bool {
    let margin = 0.01 * (hi - lo);
    x <= lo + margin || x >= hi - margin
}

/// The status and the fit of a form with parameters found (`ln_shape`: ln τ,
/// and ln β for the power law, each with its range).
fn finish(form: Form, points: &[(f64, f64)], k: usize, shape: &[(f64, (f64, f64))]) -> Fit {
    let tau = shape[0].0.exp();
    let beta = shape.get(1).map(|b| b.0.exp());
    let g = |d: f64| match beta {
        Some(b) => power_shape(d, tau, b),
        None => exp_shape(d, tau),
    };
    let (r_inf, rss) = solve_r_inf(points, g);
    let last = points.iter().map(|p| p.0).fold(0.0, f64::max);
    let lost = (1.0 - r_inf) * (1.0 - g(last));
    let status = if lost < NO_DECAY {
        FitStatus::NoDecay
    } else if shape.iter().any(|&(x, range)| on_edge(x, range)) || on_edge(r_inf, R_INF_RANGE) {
        FitStatus::AtBound
    } else {
        FitStatus::Ok
    };
    Fit {
        form,
        status,
        tau: Some(tau),
        beta,
        r_inf: Some(r_inf),
        rss: Some(rss),
        aicc: aicc(rss, points.len(), k),
        points: points.len(),
    }
}

fn too_few(form: Form, points: usize) -> Fit {
    Fit { form, status: FitStatus::TooFewPoints, tau: None, beta: None, r_inf: None, rss: None, aicc: None, points }
}

/// Fits the exponential form (k = 3: τ, r∞, noise) to (Δ, r) points.
pub fn fit_exponential(points: &[(f64, f64)]) -> Fit {
    const K: usize = 3;
    let Some((lo, hi)) = log_tau_range(points).filter(|_| points.len() > K + 1) else {
        return too_few(Form::Exponential, points.len());
    };
    let rss = |x: [f64; 1]| solve_r_inf(points, |d| exp_shape(d, x[0].clamp(lo, hi).exp())).1;
    let grid = 200;
    let best = (0..=grid)
        .map(|i| lo + (hi - lo) * i as f64 / grid as f64)
        .min_by(|a, b| rss([*a]).total_cmp(&rss([*b])))
        .expect("a non-empty grid");
    let [ln_tau] = nelder_mead(rss, [best], (hi - lo) / grid as f64, 200);
    finish(Form::Exponential, points, K, &[(ln_tau.clamp(lo, hi), (lo, hi))])
}

/// Fits the power-law form (k = 4: τ, β, r∞, noise) to (Δ, r) points.
pub fn fit_power(points: &[(f64, f64)]) -> Fit {
    const K: usize = 4;
    let Some((lo, hi)) = log_tau_range(points).filter(|_| points.len() > K + 1) else {
        return too_few(Form::Power, points.len());
    };
    let (blo, bhi) = (BETA_RANGE.0.ln(), BETA_RANGE.1.ln());
    let rss =
        |x: [f64; 2]| solve_r_inf(points, |d| power_shape(d, x[0].clamp(lo, hi).exp(), x[1].clamp(blo, bhi).exp())).1;
    let (gt, gb) = (80, 60);
    let mut best = ([lo, blo], f64::INFINITY);
    for i in 0..=gt {
        for j in 0..=gb {
            let x = [lo + (hi - lo) * i as f64 / gt as f64, blo + (bhi - blo) * j as f64 / gb as f64];
            let v = rss(x);
            if v < best.1 {
                best = (x, v);
            }
        }
    }
    let [ln_tau, ln_beta] = nelder_mead(rss, best.0, (hi - lo) / gt as f64, 400);
    finish(Form::Power, points, K, &[(ln_tau.clamp(lo, hi), (lo, hi)), (ln_beta.clamp(blo, bhi), (blo, bhi))])
}

/// Fits both forms; the preferred is the `ok` fit with the lower AICc
/// (none when neither is `ok`).
pub fn fit_both(points: &[(f64, f64)]) -> (Fit, Fit, Option<Form>) {
    let (e, p) = (fit_exponential(points), fit_power(points));
    let preferred = match (e.ok().and_then(|f| f.aicc), p.ok().and_then(|f| f.aicc)) {
        (Some(a), Some(b)) => Some(if b < a { Form::Power } else { Form::Exponential }),
        (Some(_), None) => Some(Form::Exponential),
        (None, Some(_)) => Some(Form::Power),
        (None, None) => None,
    };
    (e, p, preferred)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deltas() -> Vec<f64> {
        // Log-spaced like the extra evaluations after an event, plus a regular grid.
        let mut d: Vec<f64> = (0..13).map(|k| (1u64 << k) as f64).collect();
        d.extend((1..=40).map(|i| i as f64 * 100.0));
        d.insert(0, 0.0);
        d.sort_by(f64::total_cmp);
        d.dedup();
        d
    }

    /// A small deterministic wiggle, standing in for evaluation noise.
    fn noise(i: usize) -> f64 {
        0.004 * ((i as f64 * 2.399).sin())
    }

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs()
    }

    #[test]
    fn exponential_fit_recovers_known_parameters() {
        for (tau, r_inf) in [(50.0, 0.2), (400.0, 0.0), (1500.0, 0.5)] {
            let pts: Vec<(f64, f64)> = deltas()
                .iter()
                .enumerate()
                .map(|(i, &d)| (d, r_inf + (1.0 - r_inf) * (-d / tau).exp() + noise(i)))
                .collect();
            let f = fit_exponential(&pts);
            assert_eq!(f.status, FitStatus::Ok);
            assert!(close(f.tau.unwrap(), tau, 0.05), "τ {:?} vs {tau}", f.tau);
            assert!((f.r_inf.unwrap() - r_inf).abs() <= 0.05 * r_inf.max(0.1), "r∞ {:?} vs {r_inf}", f.r_inf);
            let p = fit_power(&pts);
            assert!(
                f.aicc.unwrap() < p.aicc.unwrap() + 4.0,
                "exponential data should not favour the power law clearly: {:?} vs {:?}",
                f.aicc,
                p.aicc
            );
        }
    }

    #[test]
    fn power_fit_recovers_known_parameters_and_wins_on_power_data() {
        for (tau, beta, r_inf) in [(20.0, 0.7, 0.1), (100.0, 1.5, 0.3), (10.0, 0.4, 0.0)] {
            let pts: Vec<(f64, f64)> = deltas()
                .iter()
                .enumerate()
                .map(|(i, &d)| (d, r_inf + (1.0 - r_inf) * (1.0 + d / tau).powf(-beta) + noise(i) * 0.25))
                .collect();
            let p = fit_power(&pts);
            assert_eq!(p.status, FitStatus::Ok);
            assert!(close(p.tau.unwrap(), tau, 0.05), "τ {:?} vs {tau}", p.tau);
            assert!(close(p.beta.unwrap(), beta, 0.05), "β {:?} vs {beta}", p.beta);
            assert!((p.r_inf.unwrap() - r_inf).abs() <= 0.05 * r_inf.max(0.1), "r∞ {:?} vs {r_inf}", p.r_inf);
            let (e, _, preferred) = fit_both(&pts);
            assert!(
                p.aicc.unwrap() < e.aicc.unwrap(),
                "power-law data prefers the power law: {:?} vs {:?}",
                p.aicc,
                e.aicc
            );
            assert_eq!(preferred, Some(Form::Power));
        }
    }

    #[test]
    fn too_few_points_give_no_parameters() {
        let four: Vec<(f64, f64)> = (0..4).map(|i| (i as f64 * 10.0, 1.0 - 0.2 * i as f64)).collect();
        assert_eq!(fit_exponential(&four).status, FitStatus::TooFewPoints);
        assert_eq!(fit_exponential(&four).tau, None);
        let five: Vec<(f64, f64)> = (0..5).map(|i| (i as f64 * 10.0, (-(i as f64) / 2.0).exp())).collect();
        assert_ne!(fit_exponential(&five).status, FitStatus::TooFewPoints);
        assert_eq!(fit_power(&five).status, FitStatus::TooFewPoints);
        assert_eq!(fit_both(&four).2, None);
    }

    #[test]
    fn data_without_decay_are_flagged_not_fitted_to_the_fastest_tau() {
        let flat: Vec<(f64, f64)> = deltas().iter().enumerate().map(|(i, &d)| (d, 1.0 + noise(i))).collect();
        let (e, p, preferred) = fit_both(&flat);
        assert_eq!(e.status, FitStatus::NoDecay);
        assert_eq!(p.status, FitStatus::NoDecay);
        assert_eq!(preferred, None);
    }

    #[test]
    fn a_linear_decline_is_not_an_identified_decay() {
        // r falls by a quarter of the gap, linearly, over the window: an
        // exponential can only follow it with τ far beyond the window.
        let last = *deltas().last().unwrap();
        let line: Vec<(f64, f64)> = deltas().iter().map(|&d| (d, 1.0 - 0.25 * d / last)).collect();
        let e = fit_exponential(&line);
        assert_eq!(e.status, FitStatus::AtBound, "{e:?}");
    }

    #[test]
    fn parameters_stay_inside_their_ranges() {
        // A collapse to far below chance: r∞ would like to be −3.
        let pts: Vec<(f64, f64)> = deltas().iter().map(|&d| (d, -3.0 + 4.0 * (-d / 200.0).exp())).collect();
        let e = fit_exponential(&pts);
        assert_eq!(e.r_inf, Some(R_INF_RANGE.0));
        assert_eq!(e.status, FitStatus::AtBound);
    }
}

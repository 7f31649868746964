//! Least-squares fits of retention curves:
//!
//! - exponential: r(Δ) = r∞ + (1 − r∞)·exp(−Δ/τ)
//! - power law:   r(Δ) = r∞ + (1 − r∞)·(1 + Δ/τ)^(−β)
//!
//! For fixed shape parameters the model is linear in r∞, whose best value
//! has a closed form; the shape parameters (ln τ, ln β) are found by a grid
//! search refined with Nelder–Mead. Both forms report the residual sum of
//! squares and the AIC, n·ln(RSS/n) + 2k, for choosing between them.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fit {
    pub form: &'static str,
    pub tau: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    pub r_inf: f64,
    pub rss: f64,
    pub aic: f64,
    pub points: usize,
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
    let r_inf = if den > 0.0 { num / den } else { 0.0 };
    let rss = points.iter().map(|&(d, r)| {
        let gd = g(d);
        let e = r - (gd + r_inf * (1.0 - gd));
        e * e
    }).sum();
    (r_inf, rss)
}

fn aic(rss: f64, n: usize, k: usize) -> f64 {
    n as f64 * (rss / n as f64).max(1e-300).ln() + 2.0 * k as f64
}

/// Nelder–Mead minimisation of `f` from `start` with initial step `step`.
fn nelder_mead<const N: usize>(f: impl Fn([f64; N]) -> f64, start: [f64; N], step: f64, iters: usize) -> [f64; N] {
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

/// The range of ln τ to search: from a tenth of the smallest positive Δ to
/// a hundred times the largest.
fn log_tau_range(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let min = points.iter().map(|p| p.0).filter(|&d| d > 0.0).fold(f64::INFINITY, f64::min);
    let max = points.iter().map(|p| p.0).fold(0.0, f64::max);
    (min.is_finite() && max > 0.0).then(|| ((min / 10.0).ln(), (max * 100.0).ln()))
}

/// Fits the exponential form to (Δ, r) points; None with fewer than 3 points.
pub fn fit_exponential(points: &[(f64, f64)]) -> Option<Fit> {
    if points.len() < 3 {
        return None;
    }
    let (lo, hi) = log_tau_range(points)?;
    let rss = |x: [f64; 1]| solve_r_inf(points, |d| exp_shape(d, x[0].clamp(lo, hi).exp())).1;
    let grid = 200;
    let best = (0..=grid).map(|i| lo + (hi - lo) * i as f64 / grid as f64).min_by(|a, b| rss([*a]).total_cmp(&rss([*b])))?;
    let [ln_tau] = nelder_mead(rss, [best], (hi - lo) / grid as f64, 200);
    let tau = ln_tau.clamp(lo, hi).exp();
    let (r_inf, rss) = solve_r_inf(points, |d| exp_shape(d, tau));
    Some(Fit { form: "exponential", tau, beta: None, r_inf, rss, aic: aic(rss, points.len(), 2), points: points.len() })
}

/// Fits the power-law form to (Δ, r) points; None with fewer than 4 points.
pub fn fit_power(points: &[(f64, f64)]) -> Option<Fit> {
    if points.len() < 4 {
        return None;
    }
    let (lo, hi) = log_tau_range(points)?;
    let (blo, bhi) = ((0.02f64).ln(), (50.0f64).ln());
    // The search stays inside the grid's box: at its edges the power law
    // degenerates into the exponential (β, τ → ∞ with τ/β fixed).
    let rss = |x: [f64; 2]| solve_r_inf(points, |d| power_shape(d, x[0].clamp(lo, hi).exp(), x[1].clamp(blo, bhi).exp())).1;
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
    let (tau, beta) = (ln_tau.clamp(lo, hi).exp(), ln_beta.clamp(blo, bhi).exp());
    let (r_inf, rss) = solve_r_inf(points, |d| power_shape(d, tau, beta));
    Some(Fit { form: "power", tau, beta: Some(beta), r_inf, rss, aic: aic(rss, points.len(), 3), points: points.len() })
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
            let pts: Vec<(f64, f64)> = deltas().iter().enumerate().map(|(i, &d)| (d, r_inf + (1.0 - r_inf) * (-d / tau).exp() + noise(i))).collect();
            let f = fit_exponential(&pts).unwrap();
            assert!(close(f.tau, tau, 0.05), "τ {} vs {tau}", f.tau);
            assert!((f.r_inf - r_inf).abs() <= 0.05 * r_inf.max(0.1), "r∞ {} vs {r_inf}", f.r_inf);
            let p = fit_power(&pts).unwrap();
            assert!(f.aic < p.aic + 4.0, "exponential data should not favour the power law clearly: {} vs {}", f.aic, p.aic);
        }
    }

    #[test]
    fn power_fit_recovers_known_parameters_and_wins_on_power_data() {
        for (tau, beta, r_inf) in [(20.0, 0.7, 0.1), (100.0, 1.5, 0.3), (10.0, 0.4, 0.0)] {
            let pts: Vec<(f64, f64)> = deltas().iter().enumerate().map(|(i, &d)| (d, r_inf + (1.0 - r_inf) * (1.0 + d / tau).powf(-beta) + noise(i) * 0.25)).collect();
            let p = fit_power(&pts).unwrap();
            assert!(close(p.tau, tau, 0.05), "τ {} vs {tau}", p.tau);
            assert!(close(p.beta.unwrap(), beta, 0.05), "β {} vs {beta}", p.beta.unwrap());
            assert!((p.r_inf - r_inf).abs() <= 0.05 * r_inf.max(0.1), "r∞ {} vs {r_inf}", p.r_inf);
            let e = fit_exponential(&pts).unwrap();
            assert!(p.aic < e.aic, "power-law data prefers the power law: {} vs {}", p.aic, e.aic);
        }
    }

    #[test]
    fn too_few_points_give_no_fit() {
        assert!(fit_exponential(&[(0.0, 1.0), (1.0, 0.5)]).is_none());
        assert!(fit_power(&[(0.0, 1.0), (1.0, 0.5), (2.0, 0.4)]).is_none());
    }
}

//! The statistics the summaries and sweeps report: Student-t quantiles
//! (exact for every degree of freedom), the normal tail, means with t
//! intervals, the Kaplan–Meier median of censored values, and a power law
//! fitted to points some of which are lower bounds (censored regression).

use serde::{Deserialize, Serialize};

use super::fit::nelder_mead;

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine terms).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = C[1..].iter().enumerate().fold(C[0], |s, (i, c)| s + c / (x + 1.0 + i as f64));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// Continued fraction of the regularized incomplete beta (modified Lentz).
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    let tiny = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    d = 1.0 / if d.abs() < tiny { tiny } else { d };
    let mut h = d;
    for m in 1..500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        for coefficient in
            [m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))]
        {
            d = 1.0 + coefficient * d;
            d = 1.0 / if d.abs() < tiny { tiny } else { d };
            c = 1.0 + coefficient / c;
            c = if c.abs() < tiny { tiny } else { c };
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function I_x(a, b).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// P(T ≤ t) for Student's t with `df` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 { 1.0 - tail } else { tail }
}

/// The two-sided 95% quantile of Student's t: P(|T| ≤ q) = 0.95, for any
/// df ≥ 1 (bisection on the exact distribution function).
pub fn t95(df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1000.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < 0.975 { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// The regularized upper incomplete gamma Q(a, x) (series below a + 1, a
/// continued fraction above).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut term, mut sum, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        return 1.0 - front * sum;
    }
    let tiny = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / tiny;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..1000 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        d = 1.0 / if d.abs() < tiny { tiny } else { d };
        c = b + an / c;
        c = if c.abs() < tiny { tiny } else { c };
        h *= d * c;
        if (d * c - 1.0).abs() < 1e-16 {
            break;
        }
    }
    front * h
}

/// P(Z > z) for a standard normal Z, accurate far into the tail.
pub fn normal_tail(z: f64) -> f64 {
    let q = 0.5 * gamma_q(0.5, 0.5 * z * z);
    if z >= 0.0 { q } else { 1.0 - q }
}

/// A mean over seeds with its 95% t interval; the interval is absent with
/// one value (it is undefined, not zero).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mean {
    pub mean: f64,
    pub n: usize,
    pub ci95: Option<f64>,
}

/// The mean of `values` with its 95% t half-width; None when empty.
pub fn mean_ci(values: &[f64]) -> Option<Mean> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let ci95 = (n > 1).then(|| {
        let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        t95((n - 1) as f64) * sd / (n as f64).sqrt()
    });
    Some(Mean { mean, n, ci95 })
}

/// A value that is either observed or known only to exceed `value`
/// (censored: e.g. a half-life not reached inside its window).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub value: f64,
    pub censored: bool,
}

/// The Kaplan–Meier median of observations some of which are censored.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Median {
    /// The estimated survival falls to one half at `value`.
    Reached { value: f64 },
    /// Half or more are censored: the median exceeds `value`, the largest
    /// value observed or censored.
    Above { value: f64 },
}

/// Kaplan–Meier: S(t) = Π over event times tᵢ ≤ t of (1 − dᵢ/nᵢ); the
/// median is the first event time where S ≤ 1/2. At equal values events
/// count before censorings. None when empty.
pub fn km_median(obs: &[Observation]) -> Option<Median> {
    let mut sorted = obs.to_vec();
    sorted.sort_by(|a, b| a.value.total_cmp(&b.value).then(a.censored.cmp(&b.censored)));
    let mut at_risk = sorted.len();
    let mut survival = 1.0;
    let mut i = 0;
    while i < sorted.len() {
        let v = sorted[i].value;
        let same = sorted[i..].iter().take_while(|o| o.value == v).count();
        let events = sorted[i..i + same].iter().filter(|o| !o.censored).count();
        if events > 0 {
            survival *= 1.0 - events as f64 / at_risk as f64;
            if survival <= 0.5 + 1e-12 {
                return Some(Median::Reached { value: v });
            }
        }
        at_risk -= same;
        i += same;
    }
    sorted.last().map(|o| Median::Above { value: o.value })
}

/// A power law y = prefactor · x^exponent fitted in log-log.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerLaw {
    pub exponent: f64,
    /// 95% half-width of the exponent (absent with too few points).
    pub exponent_ci95: Option<f64>,
    pub prefactor: f64,
    pub points: usize,
    pub censored: usize,
}

/// Fits ln y = a + b·ln x to points with x, y > 0, some of them censored
/// (y a lower bound). Without censored points: least squares, the interval
/// from the slope's standard error and the t quantile with n − 2 degrees of
/// freedom. With them: the censored-normal (Tobit) likelihood, maximized by
/// Nelder–Mead, the interval from the observed information, with the same
/// t quantile. None with fewer than two distinct x or fewer than two
/// uncensored points.
pub fn power_law(points: &[(f64, Observation)]) -> Option<PowerLaw> {
    let pts: Vec<(f64, f64, bool)> = points
        .iter()
        .filter(|p| p.0 > 0.0 && p.1.value > 0.0)
        .map(|p| (p.0.ln(), p.1.value.ln(), p.1.censored))
        .collect();
    let n = pts.len();
    let censored = pts.iter().filter(|p| p.2).count();
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if n < 2 || sxx <= 0.0 || n - censored < 2 {
        return None;
    }
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let slope = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    let intercept = my - slope * mx;
    let t = (n > 2).then(|| t95((n - 2) as f64));
    if censored == 0 {
        let ci = t.map(|t| {
            let rss: f64 = pts.iter().map(|p| (p.1 - intercept - slope * p.0).powi(2)).sum();
            t * (rss / (n - 2) as f64 / sxx).sqrt()
        });
        return Some(PowerLaw { exponent: slope, exponent_ci95: ci, prefactor: intercept.exp(), points: n, censored });
    }
    // −log-likelihood of (a, b, ln σ).
    let nll = |x: [f64; 3]| {
        let sigma = x[2].exp();
        pts.iter()
            .map(|&(lx, ly, cens)| {
                let z = (ly - x[0] - x[1] * lx) / sigma;
                if cens { -normal_tail(z).max(1e-300).ln() } else { x[2] + 0.5 * z * z }
            })
            .sum::<f64>()
    };
    let rss: f64 = pts.iter().map(|p| (p.1 - intercept - slope * p.0).powi(2)).sum();
    let mut best = [intercept, slope, (rss / n as f64).sqrt().max(1e-3).ln()];
    for _ in 0..4 {
        best = nelder_mead(nll, best, 0.3, 2000);
    }
    let ci = t.and_then(|t| Some(t * hessian_inverse_diag(&nll, best)?[1].sqrt()));
    Some(PowerLaw { exponent: best[1], exponent_ci95: ci, prefactor: best[0].exp(), points: n, censored })
}

/// The diagonal of the inverse Hessian of `f` at `x` (central differences);
/// None when it is not positive definite.
fn hessian_inverse_diag(f: &impl Fn([f64; 3]) -> f64, x: [f64; 3]) -> Option<[f64; 3]> {
    let h = 1e-4;
    let at = |di: usize, si: f64, dj: usize, sj: f64| {
        let mut y = x;
        y[di] += si * h;
        y[dj] += sj * h;
        f(y)
    };
    let m: [[f64; 3]; 3] = std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            (at(i, 1.0, j, 1.0) - at(i, 1.0, j, -1.0) - at(i, -1.0, j, 1.0) + at(i, -1.0, j, -1.0)) / (4.0 * h * h)
        })
    });
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let diag = [
        (m[1][1] * m[2][2] - m[1][2] * m[2][1]) / det,
        (m[0][0] * m[2][2] - m[0][2] * m[2][0]) / det,
        (m[0][0] * m[1][1] - m[0][1] * m[1][0]) / det,
    ];
    (det > 0.0 && diag.iter().all(|&v| v > 0.0 && v.is_finite())).then_some(diag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_published_tables() {
        // Two-sided 95% values from standard tables, df 1…200.
        for (df, want) in [
            (1.0, 12.7062),
            (2.0, 4.3027),
            (3.0, 3.1824),
            (5.0, 2.5706),
            (10.0, 2.2281),
            (30.0, 2.0423),
            (31.0, 2.0395),
            (60.0, 2.0003),
            (120.0, 1.9799),
            (200.0, 1.9719),
        ] {
            assert!((t95(df) - want).abs() < 5e-4, "df {df}: {} vs {want}", t95(df));
        }
    }

    #[test]
    fn the_normal_tail_matches_known_values() {
        for (z, want) in [
            (0.0, 0.5),
            (1.959_963_985, 0.025),
            (-1.0, 0.841_344_746),
            (3.0, 1.349_898_032e-3),
            (8.0, 6.220_960_574e-16),
        ] {
            assert!((normal_tail(z) - want).abs() <= 1e-8 * want.max(1e-7), "z {z}: {} vs {want}", normal_tail(z));
        }
    }

    #[test]
    fn one_value_has_no_interval_and_several_have_the_t_interval() {
        assert_eq!(mean_ci(&[3.0]), Some(Mean { mean: 3.0, n: 1, ci95: None }));
        let m = mean_ci(&[1.0, 2.0, 3.0]).unwrap();
        // s = 1, n = 3: t(2) · 1/√3.
        assert!((m.ci95.unwrap() - 4.3027 / 3f64.sqrt()).abs() < 1e-3);
        assert_eq!(mean_ci(&[]), None);
    }

    fn obs(value: f64, censored: bool) -> Observation {
        Observation { value, censored }
    }

    #[test]
    fn kaplan_meier_median_on_hand_worked_examples() {
        // Uncensored: the median of 1…5 is 3.
        let plain: Vec<Observation> = (1..=5).map(|v| obs(v as f64, false)).collect();
        assert_eq!(km_median(&plain), Some(Median::Reached { value: 3.0 }));
        // 1, 2+, 3, 4, 5: S(1) = 4/5, S(3) = 4/5 · 2/3 = 8/15 > 1/2, S(4) = 8/15 · 1/2 = 4/15.
        let some = [obs(1.0, false), obs(2.0, true), obs(3.0, false), obs(4.0, false), obs(5.0, false)];
        assert_eq!(km_median(&some), Some(Median::Reached { value: 4.0 }));
        // Three of four censored: the median is only bounded below.
        let most = [obs(10.0, false), obs(100.0, true), obs(100.0, true), obs(100.0, true)];
        assert_eq!(km_median(&most), Some(Median::Above { value: 100.0 }));
    }

    /// Half-lives y = 3·x^0.4 with log-normal scatter, censored at `window`.
    fn censored_sweep(seed: u64, window: f64) -> Vec<(f64, Observation)> {
        let mut rng = crate::rng::stream(seed, "censored-sweep", 0);
        let mut out = Vec::new();
        for k in 0..8 {
            let x = 1e4 * 2f64.powi(k);
            for _ in 0..4 {
                let (u1, u2) = (crate::rng::uniform(&mut rng).max(1e-12), crate::rng::uniform(&mut rng));
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let y = 3.0 * x.powf(0.4) * (0.3 * z).exp();
                out.push((x, if y > window { obs(window, true) } else { obs(y, false) }));
            }
        }
        out
    }

    #[test]
    fn censored_points_recover_a_known_exponent_better_than_dropping_them() {
        // Dropping censored points keeps the short half-lives of the largest
        // models only: the exponent comes out biased low. As lower bounds
        // they remove the bias.
        let (mut with, mut dropped, mut covered) = (0.0, 0.0, 0);
        for seed in 1..=20 {
            let pts = censored_sweep(seed, 400.0);
            assert!(pts.iter().filter(|p| p.1.censored).count() >= 6, "the window censors the largest models");
            let fit = power_law(&pts).unwrap();
            let naive: Vec<(f64, Observation)> = pts.iter().filter(|p| !p.1.censored).copied().collect();
            let naive = power_law(&naive).unwrap();
            with += fit.exponent - 0.4;
            dropped += naive.exponent - 0.4;
            covered += ((fit.exponent - 0.4).abs() <= fit.exponent_ci95.unwrap()) as usize;
        }
        let (with, dropped) = (with / 20.0, dropped / 20.0);
        assert!(
            dropped < -0.05 && with.abs() < 0.3 * dropped.abs(),
            "mean error of the exponent with censoring {with} vs dropping {dropped}"
        );
        assert!(covered >= 16, "the 95% interval covers the true exponent in {covered} of 20 sweeps");
    }

    #[test]
    fn without_censoring_the_fit_is_least_squares() {
        let pts: Vec<(f64, Observation)> =
            [(10.0, 20.0), (100.0, 70.0), (1000.0, 180.0)].iter().map(|&(x, y)| (x, obs(y, false))).collect();
        let fit = power_law(&pts).unwrap();
        let (lx, ly): (Vec<f64>, Vec<f64>) = pts.iter().map(|p| (p.0.ln(), p.1.value.ln())).unzip();
        let slope = (ly[2] - ly[0]) / (lx[2] - lx[0]);
        // Equally spaced in ln x: the least-squares slope is the end-to-end slope.
        assert!((fit.exponent - slope).abs() < 1e-12);
        assert_eq!(fit.censored, 0);
    }
}

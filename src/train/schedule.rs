//! Learning-rate schedules: linear warmup, then constant, cosine or linear
//! decay to a floor.

use crate::config::{LrSchedule, TrainConfig};

/// The learning rate for 0-based step `step`.
pub fn lr_at(t: &TrainConfig, step: u64) -> f64 {
    if step < t.warmup_steps {
        return t.lr * (step + 1) as f64 / t.warmup_steps as f64;
    }
    let decay_steps = t.steps.saturating_sub(t.warmup_steps).max(1);
    let progress = ((step - t.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    let shape = match t.schedule {
        LrSchedule::Constant => return t.lr,
        LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        LrSchedule::Linear => 1.0 - progress,
    };
    t.lr * (t.lr_floor + (1.0 - t.lr_floor) * shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: LrSchedule) -> TrainConfig {
        TrainConfig { steps: 110, warmup_steps: 10, lr: 1.0, lr_floor: 0.1, schedule, ..TrainConfig::default() }
    }

    #[test]
    fn warmup_is_linear_then_each_schedule_decays_to_its_floor() {
        for s in [LrSchedule::Constant, LrSchedule::Cosine, LrSchedule::Linear] {
            let c = cfg(s);
            assert_eq!(lr_at(&c, 0), 0.1);
            assert_eq!(lr_at(&c, 4), 0.5);
            assert_eq!(lr_at(&c, 10), 1.0);
            let end = lr_at(&c, 110);
            match s {
                LrSchedule::Constant => assert_eq!(end, 1.0),
                _ => assert!((end - 0.1).abs() < 1e-12, "{s:?} ends at {end}"),
            }
        }
        let lin = cfg(LrSchedule::Linear);
        assert!((lr_at(&lin, 60) - (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        let cos = cfg(LrSchedule::Cosine);
        assert!((lr_at(&cos, 60) - (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        assert!(lr_at(&cos, 30) > lr_at(&lin, 30));
    }
}

//! The mixture schedule: `[[schedule]]` events (drop, revive, reweight) and
//! sequential phases, resolved against a suite. Weights at any step are a
//! pure function of the events up to it, so a resumed run needs no state.

use std::path::Path;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::tasks::Suite;

#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Weight 0; remembered for a revive.
    Drop(usize),
    /// Back to the weight before the drop.
    Revive(usize),
    Weight(usize, f64),
    /// Sequential phase: only this task trains.
    Phase(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Takes effect for training step `step`, i.e. once `step` steps are done.
    pub step: u64,
    pub change: Change,
}

impl Event {
    /// (kind, task index, value) for `events.csv`.
    pub fn describe(&self) -> (&'static str, usize, Option<f64>) {
        match self.change {
            Change::Drop(t) => ("drop", t, None),
            Change::Revive(t) => ("revive", t, None),
            Change::Weight(t, w) => ("weight", t, Some(w)),
            Change::Phase(t) => ("phase", t, None),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Schedule {
    /// In the order they apply: by step, then as written.
    pub events: Vec<Event>,
}

impl Schedule {
    /// Resolves `cfg`'s schedule against `suite`; `path` is named in errors.
    pub fn build(cfg: &Config, suite: &Suite, path: &Path) -> Result<Schedule> {
        let index = |key: &str, id: &str| suite.tasks.iter().position(|t| t.id == id).ok_or_else(|| Error::key(path, key, format!("{id:?}"), "no task has this id"));
        let mut events = Vec::new();
        if let Some(seq) = &cfg.sequential {
            let order: Vec<usize> = if seq.order.is_empty() {
                (0..suite.tasks.len()).collect()
            } else {
                seq.order.iter().map(|id| index("sequential.order", id)).collect::<Result<_>>()?
            };
            for (phase, &task) in order.iter().enumerate() {
                events.push(Event { step: phase as u64 * seq.phase_steps, change: Change::Phase(task) });
            }
        }
        for (i, e) in cfg.schedule.iter().enumerate() {
            let key = |k: &str| format!("schedule[{i}].{k}");
            if e.step >= cfg.train.steps {
                return Err(Error::key(path, &key("step"), e.step, format!("must be before the last step (train.steps = {})", cfg.train.steps)));
            }
            if e.drop.is_empty() && e.revive.is_empty() && e.weights.is_empty() {
                return Err(Error::key(path, &key("step"), e.step, "the event changes nothing (give drop, revive or weights)"));
            }
            for id in &e.drop {
                events.push(Event { step: e.step, change: Change::Drop(index(&key("drop"), id)?) });
            }
            for id in &e.revive {
                events.push(Event { step: e.step, change: Change::Revive(index(&key("revive"), id)?) });
            }
            for (id, &w) in &e.weights {
                if !(w >= 0.0 && w.is_finite()) {
                    return Err(Error::key(path, &key(&format!("weights.{id}")), w, "must be non-negative"));
                }
                events.push(Event { step: e.step, change: Change::Weight(index(&key("weights"), id)?, w) });
            }
        }
        events.sort_by_key(|e| e.step); // stable: same-step events keep their order
        let schedule = Schedule { events };
        // Every step must train on something.
        for e in &schedule.events {
            if schedule.weights_at(&suite.weights, e.step).iter().all(|&w| w == 0.0) {
                return Err(Error::key(path, "schedule", format!("step {}", e.step), "leaves every task at weight 0"));
            }
        }
        Ok(schedule)
    }

    /// The mixture weights for training step `step`: `base` with every
    /// event at or before `step` applied in order.
    pub fn weights_at(&self, base: &[f64], step: u64) -> Vec<f64> {
        let mut w = base.to_vec();
        let mut before_drop = base.to_vec();
        for e in self.events.iter().take_while(|e| e.step <= step) {
            match e.change {
                Change::Drop(t) => {
                    if w[t] > 0.0 {
                        before_drop[t] = w[t];
                    }
                    w[t] = 0.0;
                }
                Change::Revive(t) => w[t] = before_drop[t],
                Change::Weight(t, x) => w[t] = x,
                Change::Phase(t) => {
                    w.iter_mut().for_each(|x| *x = 0.0);
                    w[t] = 1.0;
                }
            }
        }
        w
    }

    /// Events that take effect at training step `step`.
    pub fn at(&self, step: u64) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.step == step)
    }

    /// Whether the model is evaluated once `done` steps are done: at 0, the
    /// last step, every `every` steps, and (with `after_events`) at each
    /// event and 1, 2, 4, 8, … steps after it.
    pub fn is_eval_step(&self, done: u64, every: u64, last: u64, after_events: bool) -> bool {
        done == 0
            || done == last
            || done % every == 0
            || (after_events && self.events.iter().any(|e| done >= e.step && ((done - e.step) == 0 || (done - e.step).is_power_of_two())))
    }
}

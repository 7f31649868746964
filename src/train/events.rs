//! The mixture schedule: `[[schedule]]` events (drop, revive, reweight) and
//! sequential phases, resolved against a suite. Weights at any step are a
//! pure function of the resolved events up to it.
//!
//! An event with `when_learned` waits until its tasks are learned; its
//! trigger's progress (`TriggerProgress`) is run state, kept in checkpoints.
//! Once learned it resolves to a fixed step; with a cap (`step`) it sits at
//! the cap until then.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tasks::Suite;

/// One `[[schedule]]` entry: what changes when `step` steps are done, or
/// `after` steps after its tasks are learned (`when_learned`), whichever
/// comes first.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEvent {
    /// The step it takes effect at; with `when_learned`, the latest step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// Fire once every task of the event has held-out exact match at least
    /// this at two evaluations in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_learned: Option<f64>,
    /// Steps between the second of those evaluations and the event (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Tasks whose weight drops to 0 (still evaluated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
    /// Dropped tasks that get back the weight they had before the drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revive: Vec<String>,
    /// New mixture weights by task id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, f64>,
}

impl ScheduleEvent {
    /// The tasks the event changes, each once (drop, revive, then weights):
    /// the tasks a `when_learned` event watches.
    pub fn tasks(&self) -> Vec<&str> {
        let mut tasks: Vec<&str> = Vec::new();
        for id in self.drop.iter().chain(&self.revive).chain(self.weights.keys()) {
            if !tasks.contains(&id.as_str()) {
                tasks.push(id);
            }
        }
        tasks
    }
}

/// Tasks trained one after another, `phase_steps` each; every task is
/// evaluated throughout. `train.steps` becomes phases × phase_steps.
/// With `when_learned`, a phase ends `after` steps after its task is
/// learned (held-out exact match ≥ when_learned at two evaluations in a
/// row), or `phase_steps` after it began, whichever is first; the last
/// phase runs to the end.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SequentialConfig {
    pub phase_steps: u64,
    /// Task ids in training order (default: the suite's order), one phase each.
    #[serde(default)]
    pub order: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_learned: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

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

/// What a learned trigger has seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerProgress {
    /// Every watched task was at the threshold at the last evaluation.
    pub held_at_last_eval: bool,
    /// The step of the second of the first two evaluations in a row at which
    /// every watched task was at the threshold.
    pub learned_at: Option<u64>,
}

/// A `when_learned` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    /// Held-out exact match every watched task must reach.
    pub threshold: f64,
    /// Steps from `learned_at` to the event.
    pub after: u64,
    /// The latest step the event takes effect at.
    pub cap: Option<u64>,
    /// The tasks watched: the tasks the event changes, or for a sequential
    /// phase the previous phase's task.
    pub tasks: Vec<usize>,
    pub progress: TriggerProgress,
    /// For a sequential phase's start: the longest the previous phase
    /// lasts. Its `cap` and `from` follow the previous phase's start.
    phase_steps: Option<u64>,
    /// Evaluations up to this step are not watched (a sequential phase:
    /// the watched task trains from here).
    from: Option<u64>,
}

impl Trigger {
    /// The step the event takes effect at, once known (the cap until learned).
    pub fn step(&self) -> Option<u64> {
        let learned = self.progress.learned_at.map(|s| s + self.after);
        match (learned, self.cap) {
            (Some(l), Some(c)) => Some(l.min(c)),
            (l, c) => l.or(c),
        }
    }

    /// Whether the event takes effect at its cap, not after learning.
    pub fn capped(&self) -> bool {
        self.cap.is_some_and(|c| self.progress.learned_at.is_none_or(|s| s + self.after > c))
    }

    /// Records the evaluation after `done` steps (`accuracy[t]`: task t's
    /// exact match); true when the condition holds for the first time.
    fn observe(&mut self, done: u64, accuracy: &[f64]) -> bool {
        if self.progress.learned_at.is_some()
            || self.cap.is_some_and(|c| done > c)
            || self.from.is_some_and(|f| done <= f)
        {
            return false;
        }
        let held = self.tasks.iter().all(|&t| accuracy[t] >= self.threshold);
        let learned = held && self.progress.held_at_last_eval;
        self.progress.held_at_last_eval = held;
        if learned {
            self.progress.learned_at = Some(done);
        }
        learned
    }
}

/// When an entry's changes take effect.
#[derive(Clone, Debug)]
enum When {
    At(u64),
    Learned(Trigger),
}

/// One `[[schedule]]` entry or sequential phase.
#[derive(Clone, Debug)]
struct Entry {
    when: When,
    changes: Vec<Change>,
}

impl Entry {
    fn step(&self) -> Option<u64> {
        match &self.when {
            When::At(s) => Some(*s),
            When::Learned(t) => t.step(),
        }
    }
}

/// The task mixture over training: every event's changes, resolved.
#[derive(Clone, Debug, Default)]
pub struct Mixture {
    /// As written: phases, then `[[schedule]]` entries.
    entries: Vec<Entry>,
    /// The events whose step is known, in the order they apply: by step,
    /// then as written.
    pub events: Vec<Event>,
}

impl Mixture {
    /// Resolves a config's `[[schedule]]` events and `[sequential]` phases
    /// over `steps` training steps against `suite`; `path` is named in errors.
    pub fn build(
        schedule: &[ScheduleEvent],
        sequential: Option<&SequentialConfig>,
        steps: u64,
        suite: &Suite,
        path: &Path,
    ) -> Result<Mixture> {
        let index = |key: &str, id: &str| {
            suite
                .tasks
                .iter()
                .position(|t| t.id == id)
                .ok_or_else(|| Error::key(path, key, format!("{id:?}"), "no task has this id"))
        };
        let mut entries = Vec::new();
        if let Some(seq) = sequential {
            let order: Vec<usize> = if seq.order.is_empty() {
                (0..suite.tasks.len()).collect()
            } else {
                seq.order.iter().map(|id| index("sequential.order", id)).collect::<Result<_>>()?
            };
            for (phase, &task) in order.iter().enumerate() {
                let when = match (phase, seq.when_learned) {
                    (1.., Some(threshold)) => When::Learned(Trigger {
                        threshold,
                        after: seq.after.unwrap_or(0),
                        cap: None, // set by `resolve` from the previous phase's start
                        tasks: vec![order[phase - 1]],
                        progress: TriggerProgress::default(),
                        phase_steps: Some(seq.phase_steps),
                        from: None,
                    }),
                    _ => When::At(phase as u64 * seq.phase_steps),
                };
                entries.push(Entry { when, changes: vec![Change::Phase(task)] });
            }
        }
        for (i, e) in schedule.iter().enumerate() {
            let key = |k: &str| format!("schedule[{i}].{k}");
            let mut changes = Vec::new();
            for id in &e.drop {
                changes.push(Change::Drop(index(&key("drop"), id)?));
            }
            for id in &e.revive {
                changes.push(Change::Revive(index(&key("revive"), id)?));
            }
            for (id, &w) in &e.weights {
                if !(w >= 0.0 && w.is_finite()) {
                    return Err(Error::key(path, &key(&format!("weights.{id}")), w, "must be non-negative"));
                }
                changes.push(Change::Weight(index(&key("weights"), id)?, w));
            }
            let tasks = e.tasks().iter().map(|id| index(&key("drop"), id)).collect::<Result<_>>()?;
            let when = when(e, i, &changes, tasks, steps, path)?;
            entries.push(Entry { when, changes });
        }
        // A revive brings back a dropped task: one with no drop before it is a mistake.
        for (i, e) in schedule.iter().enumerate() {
            for id in &e.revive {
                let fixed = |x: &ScheduleEvent| x.when_learned.is_none().then_some(x.step).flatten();
                let dropped_before = schedule.iter().any(|d| {
                    d.drop.contains(id)
                        && match (fixed(d), fixed(e)) {
                            (Some(drop), Some(revive)) => drop < revive,
                            _ => true, // a when_learned drop or revive: its step is only known in the run
                        }
                });
                if !dropped_before {
                    return Err(Error::key(
                        path,
                        &format!("schedule[{i}].revive"),
                        format!("{id:?}"),
                        "revives a task that no earlier event drops",
                    ));
                }
            }
        }
        let mut mixture = Mixture { entries, events: Vec::new() };
        mixture.resolve();
        // Every step must train on something (learned events are checked
        // again when they resolve).
        if let Some(step) = mixture.first_step_without_training(&suite.weights) {
            return Err(Error::key(path, "schedule", format!("step {step}"), "leaves every task at weight 0"));
        }
        Ok(mixture)
    }

    /// Rebuilds `events` from the entries whose step is known, after
    /// moving each learned sequential phase's cap to `phase_steps` after the
    /// previous phase's start (phases are entries in order, first to last).
    fn resolve(&mut self) {
        let mut previous_start = 0;
        for e in &mut self.entries {
            if let When::Learned(t) = &mut e.when
                && let Some(len) = t.phase_steps
            {
                t.from = Some(previous_start);
                t.cap = Some(previous_start + len);
            }
            if let ([Change::Phase(_)], Some(start)) = (e.changes.as_slice(), e.step()) {
                previous_start = start;
            }
        }
        self.events = self
            .entries
            .iter()
            .filter_map(|e| Some((e.step()?, &e.changes)))
            .flat_map(|(step, changes)| changes.iter().map(move |c| Event { step, change: c.clone() }))
            .collect();
        self.events.sort_by_key(|e| e.step); // stable: same-step events keep their order
    }

    /// The first event step whose weights are all 0, if any.
    pub fn first_step_without_training(&self, base: &[f64]) -> Option<u64> {
        self.events.iter().map(|e| e.step).find(|&s| self.weights_at(base, s).iter().all(|&w| w == 0.0))
    }

    /// The step a run of `steps` steps ends at: with `end_after`, that many
    /// steps after its last event once every event's step is known (a
    /// `when_learned` event counts at its cap until it fires), at `steps`
    /// at the latest.
    pub fn end_step(&self, steps: u64, end_after: Option<u64>) -> u64 {
        // Some(latest step so far) while every step is known; checked every training step, so no allocation.
        let last = self
            .entries
            .iter()
            .try_fold(None, |latest: Option<u64>, e| Some(e.step()?.max(latest.unwrap_or(0)).into()));
        match (end_after, last.flatten()) {
            (Some(n), Some(last)) => (last + n).min(steps),
            _ => steps,
        }
    }

    /// The learned triggers, as written.
    pub fn triggers(&self) -> impl Iterator<Item = &Trigger> {
        self.entries.iter().filter_map(|e| match &e.when {
            When::Learned(t) => Some(t),
            When::At(_) => None,
        })
    }

    fn triggers_mut(&mut self) -> impl Iterator<Item = &mut Trigger> {
        self.entries.iter_mut().filter_map(|e| match &mut e.when {
            When::Learned(t) => Some(t),
            When::At(_) => None,
        })
    }

    /// Every learned trigger's progress, for a checkpoint.
    pub fn progress(&self) -> Vec<TriggerProgress> {
        self.triggers().map(|t| t.progress).collect()
    }

    /// Restores progress saved by `progress`.
    pub fn restore(&mut self, progress: &[TriggerProgress]) {
        for (t, p) in self.triggers_mut().zip(progress) {
            t.progress = *p;
        }
        self.resolve();
    }

    /// Records the evaluation after `done` steps (`accuracy[t]`: task t's
    /// exact match) and returns the triggers learned at it.
    pub fn observe(&mut self, done: u64, accuracy: &[f64]) -> Vec<Trigger> {
        let learned: Vec<Trigger> =
            self.triggers_mut().filter_map(|t| t.observe(done, accuracy).then(|| t.clone())).collect();
        if !learned.is_empty() {
            self.resolve();
        }
        learned
    }

    /// Learned triggers that take effect at their cap `step`, not learned in time.
    pub fn capped_at(&self, step: u64) -> impl Iterator<Item = &Trigger> {
        self.triggers().filter(move |t| t.capped() && t.step() == Some(step))
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
    /// last step, every `every` steps, and (with `after_events`) 1, 2, 4, 8,
    /// … steps after the start and after each event, so that first learning
    /// and relearning are timed on the same grid.
    pub fn is_eval_step(&self, done: u64, every: u64, last: u64, after_events: bool) -> bool {
        done == 0
            || done == last
            || done.is_multiple_of(every)
            || (after_events && done.is_power_of_two())
            || (after_events
                && self
                    .events
                    .iter()
                    .any(|e| done >= e.step && ((done - e.step) == 0 || (done - e.step).is_power_of_two())))
    }
}

/// When entry `i`, `e` with `changes` to `tasks`, takes effect; validated.
fn when(e: &ScheduleEvent, i: usize, changes: &[Change], tasks: Vec<usize>, steps: u64, path: &Path) -> Result<When> {
    let key = |k: &str| format!("schedule[{i}].{k}");
    if let Some(step) = e.step
        && step >= steps
    {
        return Err(Error::key(
            path,
            &key("step"),
            step,
            format!("must be before the last step (train.steps = {steps})"),
        ));
    }
    if let Some(after) = e.after
        && e.when_learned.is_none()
    {
        return Err(Error::key(path, &key("after"), after, "only applies with when_learned"));
    }
    let Some(threshold) = e.when_learned else {
        let step =
            e.step.ok_or_else(|| Error::key(path, &key("step"), "(missing)", "give step, when_learned, or both"))?;
        if changes.is_empty() {
            return Err(Error::key(
                path,
                &key("step"),
                step,
                "the event changes nothing (give drop, revive or weights)",
            ));
        }
        return Ok(When::At(step));
    };
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(Error::key(path, &key("when_learned"), threshold, "must be in (0, 1]"));
    }
    if changes.is_empty() {
        return Err(Error::key(
            path,
            &key("when_learned"),
            threshold,
            "the event changes nothing (give drop, revive or weights)",
        ));
    }
    Ok(When::Learned(Trigger {
        threshold,
        after: e.after.unwrap_or(0),
        cap: e.step,
        tasks,
        progress: TriggerProgress::default(),
        phase_steps: None,
        from: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(cap: Option<u64>) -> Trigger {
        Trigger {
            threshold: 0.9,
            after: 5,
            cap,
            tasks: vec![0, 1],
            progress: TriggerProgress::default(),
            phase_steps: None,
            from: None,
        }
    }

    #[test]
    fn a_trigger_needs_every_task_at_two_evaluations_in_a_row() {
        let mut t = trigger(None);
        assert!(!t.observe(10, &[0.95, 0.95]));
        assert!(!t.observe(20, &[0.95, 0.5]), "one task below the threshold resets it");
        assert!(!t.observe(30, &[0.9, 1.0]));
        assert_eq!(t.step(), None);
        assert!(t.observe(40, &[1.0, 0.9]));
        assert_eq!((t.progress.learned_at, t.step(), t.capped()), (Some(40), Some(45), false));
        assert!(!t.observe(50, &[1.0, 1.0]), "fires once");
    }

    /// Phases of 100 steps at most over tasks 0, 1, 2; each ends 5 steps
    /// after its task is learned.
    fn learned_phases() -> Mixture {
        let phase = |task: usize, watched: usize| Entry {
            when: When::Learned(Trigger { tasks: vec![watched], phase_steps: Some(100), ..trigger(None) }),
            changes: vec![Change::Phase(task)],
        };
        let first = Entry { when: When::At(0), changes: vec![Change::Phase(0)] };
        let mut s = Mixture { entries: vec![first, phase(1, 0), phase(2, 1)], events: Vec::new() };
        s.resolve();
        s
    }

    #[test]
    fn learned_phases_start_after_learning_and_cap_from_the_previous_start() {
        let mut s = learned_phases();
        let starts = |s: &Mixture| s.events.iter().map(|e| e.step).collect::<Vec<_>>();
        assert_eq!(starts(&s), [0, 100, 200], "until learned, each phase lasts phase_steps");
        assert!(s.observe(40, &[0.95, 1.0, 0.0]).is_empty());
        assert!(s.observe(50, &[0.5, 1.0, 0.0]).is_empty(), "task 1 is not watched before its phase");
        assert!(s.observe(60, &[0.95, 1.0, 0.0]).is_empty());
        assert_eq!(s.observe(70, &[0.95, 1.0, 0.0]).len(), 1, "task 0 learned at 70");
        assert_eq!(starts(&s), [0, 75, 175], "phase 1 at 70 + 5; phase 2's cap follows");
        assert!(s.observe(75, &[0.95, 1.0, 0.0]).is_empty(), "the evaluation at phase 1's start is not its task's");
        assert!(s.observe(80, &[0.95, 1.0, 0.0]).is_empty());
        assert_eq!(s.observe(90, &[0.95, 1.0, 0.0]).len(), 1);
        assert_eq!(starts(&s), [0, 75, 95]);
        assert_eq!(s.weights_at(&[1.0; 3], 94), [0.0, 1.0, 0.0]);
        assert_eq!(s.weights_at(&[1.0; 3], 95), [0.0, 0.0, 1.0]);
        let progress = s.progress();
        let mut resumed = learned_phases();
        resumed.restore(&progress);
        assert_eq!(starts(&resumed), [0, 75, 95], "a checkpoint's progress restores the phases");
    }

    #[test]
    fn a_cap_fires_first_unless_learned_in_time() {
        let mut t = trigger(Some(42));
        assert_eq!((t.step(), t.capped()), (Some(42), true));
        t.observe(30, &[1.0, 1.0]);
        t.observe(40, &[1.0, 1.0]);
        assert_eq!((t.step(), t.capped()), (Some(42), true), "learned at 40, due at 45, capped at 42");
        let mut t = trigger(Some(100));
        t.observe(30, &[1.0, 1.0]);
        t.observe(40, &[1.0, 1.0]);
        assert_eq!((t.step(), t.capped()), (Some(45), false));
        let mut t = trigger(Some(35));
        t.observe(30, &[1.0, 1.0]);
        assert!(!t.observe(40, &[1.0, 1.0]), "past the cap nothing is watched");
    }
}

//! Replay: a run's journal as this attempt found it, the key and position each step call
//! gets (name plus occurrence, in call order), the decision to replay a recorded result or
//! run the step, and the non-determinism check that refuses a step the journal recorded
//! differently. Once an attempt cannot go on (that check failed, the lease is gone, a result
//! could not be recorded) it is *poisoned*, and every later step is refused.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use kagzi_proto::{JournalEntry, RunId};
use serde_json::Value;
use tracing::warn;

use crate::context::Inner;
use crate::error::Error;

/// The journal of the run, and the steps this attempt has asked for so far.
pub(crate) struct Replay {
    /// Recorded outputs by step key.
    journal: HashMap<String, Value>,
    /// Recorded step keys by position, to catch non-deterministic replays.
    recorded_keys: HashMap<u32, String>,
    steps: Mutex<StepCounter>,
}

impl Replay {
    /// The replay of a run whose journal is `journal`.
    pub(crate) fn new(journal: Vec<JournalEntry>) -> Self {
        let mut outputs = HashMap::with_capacity(journal.len());
        let mut recorded_keys = HashMap::with_capacity(journal.len());
        for entry in journal {
            // A patch's answer takes no position (it stands beside the step that follows),
            // so adding or retiring a `patched` call shifts no step.
            if !entry.key.starts_with(PATCH_PREFIX) {
                recorded_keys.insert(entry.position, entry.key.clone());
            }
            outputs.insert(entry.key, entry.output);
        }
        Replay {
            journal: outputs,
            recorded_keys,
            steps: Mutex::new(StepCounter::default()),
        }
    }
}

/// Assigns step keys and positions in call order.
#[derive(Default)]
struct StepCounter {
    occurrences: HashMap<String, u32>,
    next_position: u32,
    /// Set once any step has really executed in this attempt: from then on the run may
    /// legitimately diverge from the journal (a step that failed before may succeed now).
    diverged: bool,
    /// Set when this attempt must not go on: every later step is refused, and the worker
    /// ends the run accordingly even if the workflow swallowed the step's error.
    poison: Option<Poison>,
    /// The answers of the patches asked about in this attempt, by journal key.
    patches: HashMap<String, bool>,
}

/// The prefix of a patch's journal key (`patch:ID`); step names must not start with it.
pub(crate) const PATCH_PREFIX: &str = "patch:";

/// A patch answer that the journal does not hold yet: to be recorded.
pub(crate) struct NewPatch {
    /// The journal key (`patch:ID`).
    pub(crate) key: String,
    /// The position of the step that follows it (the answer itself takes none).
    pub(crate) position: u32,
}

/// Why an attempt cannot go on.
#[derive(Debug, Clone)]
pub(crate) enum Poison {
    /// Replay found a different step than the journal recorded.
    NonDeterminism {
        position: u32,
        recorded: String,
        requested: String,
    },
    /// The server refused a report: this worker no longer holds the run.
    LeaseLost,
    /// A deferred step result is over the server's payload limit.
    ResultTooLarge { key: String, detail: String },
    /// A deferred step report could not be delivered.
    Unreported(String),
}

impl Poison {
    pub(crate) fn to_error(&self, run_id: RunId) -> Error {
        match self {
            Poison::NonDeterminism {
                position,
                recorded,
                requested,
            } => Error::NonDeterminism {
                position: *position,
                recorded: recorded.clone(),
                requested: requested.clone(),
            },
            Poison::LeaseLost => Error::LeaseLost { run_id },
            Poison::ResultTooLarge { key, detail } => Error::StepResultTooLarge {
                key: key.clone(),
                detail: detail.clone(),
            },
            Poison::Unreported(message) => Error::Unreported(message.clone()),
        }
    }
}

/// What to do for one step call, decided synchronously when the step is called.
pub(crate) enum Plan {
    /// The journal has the result: return it without running the step.
    Replay(Value),
    /// Run the step and report its result.
    Execute,
    /// The journal disagrees with the code.
    Reject(Error),
}

impl Inner {
    /// Assign the next key and position for a step called `name` and decide what to do.
    pub(crate) fn plan(&self, name: &str) -> (String, u32, Plan) {
        let mut steps = self
            .replay
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let occurrence = steps.occurrences.entry(name.to_owned()).or_insert(0);
        *occurrence += 1;
        let key = if *occurrence == 1 {
            name.to_owned()
        } else {
            format!("{name}#{occurrence}")
        };
        let position = steps.next_position;
        steps.next_position += 1;

        let recorded = self.replay.recorded_keys.get(&position);
        let plan = if let Some(poison) = &steps.poison {
            Plan::Reject(poison.to_error(self.run_id))
        } else if let Some(recorded) = recorded.filter(|r| !steps.diverged && **r != key) {
            // Before anything has executed in this attempt, the code must ask for the steps
            // in the order the journal recorded them — whether or not this key is recorded.
            let poison = Poison::NonDeterminism {
                position,
                recorded: recorded.clone(),
                requested: key.clone(),
            };
            let error = poison.to_error(self.run_id);
            warn!(run_id = %self.run_id, %error, "replay diverged from the journal");
            steps.poison = Some(poison);
            Plan::Reject(error)
        } else if let Some(output) = self.replay.journal.get(&key) {
            Plan::Replay(output.clone())
        } else {
            Plan::Execute
        };
        (key, position, plan)
    }

    pub(crate) fn mark_diverged(&self) {
        self.replay
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .diverged = true;
    }

    /// Whether this run takes the new branch of patch `patch`, and the answer to record
    /// when the journal does not hold it yet. The journal decides for a run that already
    /// answered; a run that has not yet replayed past this point (nothing recorded at or
    /// after the current position, or something already ran in this attempt) takes the new
    /// branch; a run whose journal goes on past it ran the old code here, and keeps to it.
    /// The answer takes no position, so adding or retiring the call shifts no step.
    pub(crate) fn patch(&self, patch: &str) -> (bool, Option<NewPatch>) {
        let key = format!("{PATCH_PREFIX}{patch}");
        let mut steps = self
            .replay
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(answer) = steps.patches.get(&key) {
            return (*answer, None);
        }
        let recorded = self
            .replay
            .journal
            .get(&key)
            .map(|v| v.as_bool() != Some(false));
        let answer = recorded.unwrap_or_else(|| {
            let position = steps.next_position;
            steps.diverged || !self.replay.recorded_keys.keys().any(|p| *p >= position)
        });
        let position = steps.next_position;
        steps.patches.insert(key.clone(), answer);
        let record = recorded.is_none().then_some(NewPatch { key, position });
        (answer, record)
    }

    /// The lease is lost: every later step of this attempt is refused, whatever poisoned it
    /// before (nothing more can be reported).
    pub(crate) fn lose_lease(&self) {
        self.replay
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .poison = Some(Poison::LeaseLost);
    }

    /// Refuse every later step of this attempt, for the first reason given.
    pub(crate) fn poison(&self, poison: Poison) {
        let mut steps = self
            .replay
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if steps.poison.is_none() {
            steps.poison = Some(poison);
        }
    }

    /// Why this attempt cannot go on, if it cannot.
    pub(crate) fn poisoned_error(&self) -> Option<Error> {
        self.replay
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .poison
            .as_ref()
            .map(|poison| poison.to_error(self.run_id))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use crate::context::WorkflowContext;
    use crate::error::{Error, Result};

    use super::*;

    fn context(journal: Vec<JournalEntry>) -> WorkflowContext {
        WorkflowContext::new(
            RunId(Uuid::now_v7()),
            "test".to_owned(),
            1,
            Uuid::new_v4(),
            journal,
            None,
        )
    }

    fn entry(key: &str, position: u32, output: Value) -> JournalEntry {
        JournalEntry {
            key: key.to_owned(),
            position,
            output,
        }
    }

    #[test]
    fn keys_count_occurrences_and_positions_follow_call_order() {
        let ctx = context(Vec::new());
        let keys: Vec<_> = ["a", "a", "b", "a", "b"]
            .into_iter()
            .map(|name| {
                let (key, position, _) = ctx.inner.plan(name);
                (key, position)
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("a".to_owned(), 0),
                ("a#2".to_owned(), 1),
                ("b".to_owned(), 2),
                ("a#3".to_owned(), 3),
                ("b#2".to_owned(), 4),
            ]
        );
    }

    #[tokio::test]
    async fn replay_that_asks_for_a_different_step_is_rejected() {
        let ctx = context(vec![entry("charge", 0, json!(1))]);
        let result: Result<u32> = ctx.run("refund", async { Ok(2) }).await;
        assert!(matches!(
            result,
            Err(Error::NonDeterminism { position: 0, ref recorded, ref requested })
                if recorded == "charge" && requested == "refund"
        ));
    }

    #[test]
    fn a_patch_answers_by_where_the_journal_is_and_shifts_no_step() {
        // New run: nothing recorded, so the new branch; asking again answers the same.
        let fresh = context(Vec::new());
        let (answer, record) = fresh.inner.patch("tax");
        assert!(answer);
        assert_eq!(
            record.map(|r| (r.key, r.position)),
            Some(("patch:tax".to_owned(), 0))
        );
        let (again, recorded_again) = fresh.inner.patch("tax");
        assert!(
            again && recorded_again.is_none(),
            "asked again: the same, not recorded twice"
        );
        let (key, position, _) = fresh.inner.plan("total");
        assert_eq!(
            (key.as_str(), position),
            ("total", 0),
            "the patch took no position"
        );

        // A run whose journal went past this point under the old code keeps to it.
        let old = context(vec![
            entry("total", 0, json!(100)),
            entry("ship", 1, json!(1)),
        ]);
        assert!(!old.inner.patch("tax").0);
        assert!(matches!(old.inner.plan("total").2, Plan::Replay(_)));

        // A recorded answer wins, whatever the journal around it.
        let recorded = context(vec![
            entry("patch:tax", 0, json!(false)),
            entry("total", 0, json!(1)),
        ]);
        assert!(!recorded.inner.patch("tax").0);
        let taken = context(vec![
            entry("patch:tax", 0, json!(true)),
            entry("total-with-tax", 0, json!(1)),
        ]);
        let (answer, record) = taken.inner.patch("tax");
        assert!(answer && record.is_none(), "replayed, not recorded again");
        assert!(matches!(
            taken.inner.plan("total-with-tax").2,
            Plan::Replay(_)
        ));
    }
}

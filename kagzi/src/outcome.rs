//! How one attempt of a run ends, decided in one place: from what the workflow function gave
//! ([`Ending`]) and why the attempt may not go on ([`crate::replay`]'s poison) to one
//! [`Outcome`] — complete, fail (retryable or not) or drop — which the worker then reports;
//! and, when the server refuses that report, what to do instead
//! ([`after_refused_completion`], [`after_refused_failure`]). Pure functions: nothing here
//! sends anything.

use serde_json::Value;

use crate::error::Error;

/// The longest error message a failed run reports; longer ones are cut (on a character
/// boundary) so the report fits any sensible payload limit.
pub(crate) const MAX_ERROR_LEN: usize = 64 * 1024;

/// What running the workflow function gave.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The workflow returned its output (as JSON), or an error.
    Returned(anyhow::Result<Value>),
    /// The workflow panicked, saying this.
    Panicked(String),
    /// The workflow suspended (a sleep, a signal wait, a child): the server let go of it.
    Suspended,
    /// No workflow of this name is registered on this worker.
    NotRegistered(String),
}

/// How the attempt ends.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Complete the run with this output; the completion carries the step reports that are
    /// still deferred.
    Complete(Value),
    /// Fail this attempt; the server retries the run while `retryable` and attempts remain.
    Fail {
        /// What went wrong (at most [`MAX_ERROR_LEN`] bytes).
        error: String,
        /// Whether another attempt could succeed.
        retryable: bool,
    },
    /// Report nothing more: the worker lets go of the run.
    Drop(DropReason),
}

/// Why a worker lets go of a run without reporting how it ended.
#[derive(Debug, PartialEq)]
pub(crate) enum DropReason {
    /// The run suspended; the server makes it due when its wait is over.
    Suspended,
    /// The lease is gone (the run was cancelled, reclaimed, or ended elsewhere).
    LeaseLost,
    /// A result could not be recorded; the lease expires and a later attempt replays the run.
    Unreported(String),
}

/// The run's input did not match the workflow's input type: retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("invalid workflow input: {0}")]
pub(crate) struct InvalidInput(pub(crate) serde_json::Error);

/// The workflow's output could not be serialized: retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("could not serialize workflow output: {0}")]
pub(crate) struct InvalidOutput(pub(crate) serde_json::Error);

/// Decides how the attempt ends from what the workflow gave and `poison`, why the attempt
/// may not go on ([`WorkflowContext::poisoned`](crate::WorkflowContext::poisoned)). The
/// poison wins: even a workflow that swallowed a step's error must not complete a run whose
/// replay diverged from its journal, whose lease is gone, or whose step results were not all
/// recorded.
pub(crate) fn decide(ending: Ending, poison: Option<Error>) -> Outcome {
    match (ending, poison) {
        (Ending::Suspended, _) => Outcome::Drop(DropReason::Suspended),
        (_, Some(Error::LeaseLost { .. })) => Outcome::Drop(DropReason::LeaseLost),
        // Retrying cannot help: the code disagrees with the journal, or a result can never
        // fit the server's limit.
        (_, Some(error @ (Error::NonDeterminism { .. } | Error::StepResultTooLarge { .. }))) => {
            fail(error.to_string(), false)
        }
        (_, Some(error)) => Outcome::Drop(DropReason::Unreported(error.to_string())),
        (Ending::NotRegistered(workflow), None) => fail(
            format!("workflow {workflow:?} is not registered on this worker"),
            true,
        ),
        (Ending::Panicked(message), None) => fail(format!("workflow panicked: {message}"), true),
        (Ending::Returned(Ok(output)), None) => Outcome::Complete(output),
        (Ending::Returned(Err(error)), None) => {
            let kagzi = error
                .chain()
                .find_map(|cause| cause.downcast_ref::<Error>());
            if let Some(Error::LeaseLost { .. }) = kagzi {
                return Outcome::Drop(DropReason::LeaseLost);
            }
            let retryable = !(error.is::<InvalidInput>()
                || error.is::<InvalidOutput>()
                || matches!(
                    kagzi,
                    Some(
                        Error::NonDeterminism { .. }
                            | Error::StepResultTooLarge { .. }
                            | Error::PayloadTooLarge { .. }
                    )
                ));
            fail(format!("{error:#}"), retryable)
        }
    }
}

/// What to do after the server refused (or never answered) a run's completion.
#[derive(Debug, PartialEq)]
pub(crate) enum AfterRefusal {
    /// The completion was refused whole because of a step it carried: report those steps on
    /// their own (a result over the limit then fails its step), and complete again without
    /// them.
    CompleteWithoutSteps,
    /// End this way instead.
    Then(Outcome),
}

/// Decides what follows a completion refused with `error`; `carried_steps` says whether it
/// carried deferred step reports.
pub(crate) fn after_refused_completion(error: &Error, carried_steps: bool) -> AfterRefusal {
    match error {
        Error::PayloadTooLarge { .. } if carried_steps => AfterRefusal::CompleteWithoutSteps,
        // The output itself can never be recorded: fail the run for good, saying why.
        Error::PayloadTooLarge { detail } => AfterRefusal::Then(fail(
            format!("the workflow's output is over the server's payload limit: {detail}"),
            false,
        )),
        other => AfterRefusal::Then(after_refused_failure(other)),
    }
}

/// How the attempt ends when its failure (or completion) could not be reported: the run is
/// dropped, and its lease expires unless it is already gone.
pub(crate) fn after_refused_failure(error: &Error) -> Outcome {
    match error {
        Error::LeaseLost { .. } => Outcome::Drop(DropReason::LeaseLost),
        other => Outcome::Drop(DropReason::Unreported(format!(
            "could not report the run's result: {other}"
        ))),
    }
}

/// A failure with `error` cut to [`MAX_ERROR_LEN`] bytes.
fn fail(mut error: String, retryable: bool) -> Outcome {
    if error.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    Outcome::Fail { error, retryable }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use kagzi_proto::RunId;

    fn lease_lost() -> Error {
        Error::LeaseLost {
            run_id: RunId::new(),
        }
    }

    fn non_determinism() -> Error {
        Error::NonDeterminism {
            position: 1,
            recorded: "charge".to_owned(),
            requested: "refund".to_owned(),
        }
    }

    #[test]
    fn a_returned_output_completes_and_an_error_fails_retryably() {
        assert_eq!(
            decide(Ending::Returned(Ok(json!(7))), None),
            Outcome::Complete(json!(7))
        );
        assert_eq!(
            decide(
                Ending::Returned(Err(anyhow::anyhow!("card declined").context("charging"))),
                None
            ),
            Outcome::Fail {
                error: "charging: card declined".to_owned(),
                retryable: true
            }
        );
        assert_eq!(
            decide(Ending::Panicked("boom".to_owned()), None),
            Outcome::Fail {
                error: "workflow panicked: boom".to_owned(),
                retryable: true
            }
        );
        assert!(matches!(
            decide(Ending::NotRegistered("greet".to_owned()), None),
            Outcome::Fail { retryable: true, ref error } if error.contains("\"greet\" is not registered")
        ));
    }

    #[test]
    fn errors_a_retry_cannot_fix_fail_for_good() {
        let bad_input = serde_json::from_str::<u32>("\"x\"").expect_err("not a number");
        let cases = [
            anyhow::Error::new(InvalidInput(bad_input)),
            anyhow::Error::new(non_determinism()),
            anyhow::Error::new(Error::PayloadTooLarge {
                detail: "input".to_owned(),
            })
            .context("starting a child"),
        ];
        for error in cases {
            assert!(
                matches!(
                    decide(Ending::Returned(Err(error)), None),
                    Outcome::Fail {
                        retryable: false,
                        ..
                    }
                ),
                "not retryable"
            );
        }
    }

    #[test]
    fn the_poison_wins_over_what_the_workflow_returned() {
        let completed = || Ending::Returned(Ok(json!("done")));
        assert_eq!(
            decide(completed(), Some(lease_lost())),
            Outcome::Drop(DropReason::LeaseLost)
        );
        assert!(matches!(
            decide(completed(), Some(non_determinism())),
            Outcome::Fail { retryable: false, ref error } if error.contains("non-deterministic")
        ));
        assert!(matches!(
            decide(completed(), Some(Error::Unreported("step a".to_owned()))),
            Outcome::Drop(DropReason::Unreported(ref why)) if why == "step a"
        ));
        assert_eq!(
            decide(Ending::Suspended, Some(lease_lost())),
            Outcome::Drop(DropReason::Suspended)
        );
    }

    #[test]
    fn a_lost_lease_inside_the_error_chain_drops_the_run() {
        let error = anyhow::Error::new(lease_lost()).context("step charge");
        assert_eq!(
            decide(Ending::Returned(Err(error)), None),
            Outcome::Drop(DropReason::LeaseLost)
        );
    }

    #[test]
    fn a_refused_completion_splits_its_steps_then_fails_for_good() {
        let too_large = Error::PayloadTooLarge {
            detail: "output is larger than the limit of 10 bytes".to_owned(),
        };
        assert_eq!(
            after_refused_completion(&too_large, true),
            AfterRefusal::CompleteWithoutSteps
        );
        assert!(matches!(
            after_refused_completion(&too_large, false),
            AfterRefusal::Then(Outcome::Fail { retryable: false, ref error }) if error.contains("limit of 10 bytes")
        ));
        assert_eq!(
            after_refused_completion(&lease_lost(), true),
            AfterRefusal::Then(Outcome::Drop(DropReason::LeaseLost))
        );
        assert!(matches!(
            after_refused_failure(&Error::Timeout),
            Outcome::Drop(DropReason::Unreported(ref why)) if why.contains("timed out")
        ));
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let Outcome::Fail { error, .. } = fail("é".repeat(MAX_ERROR_LEN), true) else {
            panic!("a failure");
        };
        assert!(error.len() <= MAX_ERROR_LEN && error.len() >= MAX_ERROR_LEN - 1);
        assert!(error.chars().all(|c| c == 'é'));
    }
}

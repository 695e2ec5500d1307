//! Typed workflows: the [`Workflow`] trait that `#[workflow]` implements, and what the
//! worker and the client need from it.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::WorkflowContext;

/// A workflow with a name and typed input and output.
///
/// `#[workflow]` implements it for you (see [`macro@crate::workflow`]); implement it by hand
/// for a workflow that carries state, such as a database pool. A `Workflow` is registered on
/// a worker with [`Worker::add`](crate::Worker::add) and started with
/// [`Client::start`](crate::Client::start), which only accepts a [`Self::Input`] and gives
/// back a [`RunHandle`](crate::RunHandle) whose result is a [`Self::Output`].
///
/// ```no_run
/// use kagzi::{Workflow, WorkflowContext};
///
/// /// Counts the words of a text, with a database pool at hand.
/// struct CountWords {
///     pool: std::sync::Arc<String>,
/// }
///
/// impl Workflow for CountWords {
///     type Input = String;
///     type Output = usize;
///     const NAME: &'static str = "count_words";
///
///     fn run(
///         &self,
///         ctx: WorkflowContext,
///         text: String,
///     ) -> impl Future<Output = anyhow::Result<usize>> + Send + 'static {
///         let _pool = self.pool.clone();
///         async move {
///             Ok(ctx.run("count", async move { Ok(text.split_whitespace().count()) }).await?)
///         }
///     }
/// }
/// ```
pub trait Workflow: Send + Sync + 'static {
    /// What a run is started with (JSON on the wire).
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// What a completed run returns (JSON on the wire).
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The workflow name: what the server, `curl` users and other languages call it.
    const NAME: &'static str;
    /// The queue [`Client::start`](crate::Client::start) uses unless told otherwise; `None`
    /// means `"default"`.
    const QUEUE: Option<&'static str> = None;
    /// How many times a failed run is retried, unless the start says otherwise.
    const RETRIES: u32 = 0;

    /// Run the workflow body for one attempt of a run.
    ///
    /// # Errors
    ///
    /// Whatever the workflow returns; a returned error fails this attempt of the run.
    fn run(
        &self,
        ctx: WorkflowContext,
        input: Self::Input,
    ) -> impl Future<Output = anyhow::Result<Self::Output>> + Send + 'static;
}

/// What a `#[workflow]` fn may return: `Result<O, E>` for any error that converts into
/// `anyhow::Error` (every `std::error::Error + Send + Sync + 'static`, `anyhow::Error`,
/// [`kagzi::Error`](crate::Error)).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a #[workflow] fn must return `Result<Output, Error>`, not `{Self}`",
    label = "this is the workflow's return type",
    note = "the error must convert into `anyhow::Error`, e.g. `anyhow::Result<Output>` or `Result<Output, kagzi::Error>`"
)]
pub trait WorkflowResult {
    /// The output of a successful run.
    type Output;
    /// The result as the worker handles it.
    ///
    /// # Errors
    ///
    /// The workflow's error, converted.
    fn into_result(self) -> anyhow::Result<Self::Output>;
}

impl<O, E> WorkflowResult for Result<O, E>
where
    E: Into<anyhow::Error>,
{
    type Output = O;

    fn into_result(self) -> anyhow::Result<O> {
        self.map_err(Into::into)
    }
}

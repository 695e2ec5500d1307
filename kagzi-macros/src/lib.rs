//! Attribute macros for Kagzi: `#[workflow]` and `#[step]`.
//!
//! Use them through the `kagzi` crate (`kagzi::workflow`, `kagzi::step`), which documents
//! them in full; the code they generate refers to `::kagzi`, so this crate is not useful on
//! its own.

mod expand;
mod parse;
mod validate;

use proc_macro::TokenStream;
use quote::ToTokens;

/// Turn an `async fn` into a typed, registrable Kagzi workflow.
///
/// ```no_run
/// use kagzi::{workflow, Client, Worker, WorkflowContext};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Order { id: u64 }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Receipt { id: u64 }
///
/// #[workflow]
/// async fn checkout(ctx: WorkflowContext, order: Order) -> anyhow::Result<Receipt> {
///     Ok(Receipt { id: order.id })
/// }
///
/// # async fn example(mut worker: Worker, client: Client) -> kagzi::Result<()> {
/// worker.add(checkout);                                     // register: no string, no closure
/// let run = client.start(checkout, Order { id: 7 }).await?; // only an `Order` compiles here
/// let receipt: Receipt = run.result().await?;               // typed output
/// # Ok(()) }
/// ```
///
/// # The fn
///
/// `async fn name(ctx: WorkflowContext, input: I) -> Result<O, E>`, where
/// - `ctx` comes first and is taken by value;
/// - `input` is optional (the workflow's input is then `()`), owned (it is deserialized from
///   JSON), and the only other parameter — put several values in a struct or a tuple;
/// - `I` and `O` implement `Serialize` and `DeserializeOwned`;
/// - `E` converts into `anyhow::Error` (`anyhow::Result<O>`, `kagzi::Result<O>`, or your
///   own `std::error::Error` type);
/// - the fn is free (no `self`) and not generic.
///
/// Anything else is a compile error at the offending token that says what is allowed.
///
/// # What is generated
///
/// The fn becomes a unit struct of the same name (so `greet` is now a *value* you pass to
/// `worker.add(greet)` and `client.start(greet, input)`) implementing `kagzi::Workflow`:
/// `NAME` is the workflow name, `Input = I`, `Output = O`, `QUEUE` and `RETRIES` are the
/// defaults below, and `run` calls the fn's body unchanged. Docs and `#[cfg]` stay on the
/// struct; other attributes (such as `#[tracing::instrument]`) stay on the body.
///
/// # Options
///
/// | option | default | meaning |
/// | --- | --- | --- |
/// | `name = "..."` | the fn name | the workflow name on the server: what `curl`, schedules and other languages start |
/// | `queue = "..."` | `"default"` | the queue `client.start(..)` puts runs on (a start can override it) |
/// | `retries = N` | `0` | how many times a failed run is retried (a start can override it) |
///
/// ```no_run
/// # use kagzi::{workflow, WorkflowContext};
/// #[workflow(name = "send-welcome-email", queue = "emails", retries = 3)]
/// async fn welcome(ctx: WorkflowContext, address: String) -> anyhow::Result<()> {
///     Ok(())
/// }
/// ```
///
/// The string API keeps working beside it: a worker with `worker.add(welcome)` runs
/// `client.workflow("send-welcome-email", "emails", json)` starts too.
#[proc_macro_attribute]
pub fn workflow(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let expanded = parse::options(args.into(), validate::WORKFLOW_OPTIONS)
        .and_then(|options| Ok((options, parse::item_fn(item.clone(), "workflow")?)))
        .and_then(|(options, func)| validate::workflow(options, func))
        .map(expand::workflow);
    emit(expanded, item)
}

/// Make an `async fn` a durable step: inside a workflow its result is journaled and replayed;
/// outside one it simply runs.
///
/// ```no_run
/// use kagzi::{step, workflow, WorkflowContext};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Card { number: String }
///
/// #[step(attempts = 3, backoff = "200ms", timeout = "10s")]
/// async fn charge(card: &Card, cents: u64) -> anyhow::Result<String> {
///     Ok(format!("charged {cents} to {}", card.number)) // call the payment provider here
/// }
///
/// #[step]
/// async fn email(to: &str, text: &str) -> anyhow::Result<()> {
///     Ok(())
/// }
///
/// #[workflow]
/// async fn checkout(ctx: WorkflowContext, card: Card) -> anyhow::Result<String> {
///     let receipt = charge(&card, 4200).await?; // key "charge"
///     // Parallel steps: keys are taken in call order, so replays find the same ones.
///     futures::try_join!(email("a@example.com", &receipt), email("b@example.com", &receipt))?;
///     Ok(receipt)
/// }
/// ```
///
/// # Inside a workflow
///
/// When called from a running workflow (the worker makes the run's context current while
/// it polls the workflow), a step call takes its **key** at once, at the call: the step
/// name for its first call in the run, `name#2`, `name#3`, ... after (loops), plus its
/// **position** in the run. Because keys are taken at the call and not when the future is
/// first polled, steps in `join!`/`join_all`/`try_join!` get the same keys on every replay.
///
/// Then, if the run's journal holds a result for the key, the step returns it without
/// running the body. Otherwise the body runs (with the retries and timeout below), and its
/// value is recorded on the server before the step returns. Side effects run at least once
/// (a crash after the effect but before the record re-runs it — make them idempotent);
/// recorded results are used exactly once.
///
/// If a replay asks, at some position, for a different step than the journal recorded
/// there (the workflow changed under a run in flight), the step fails with
/// `kagzi::Error::NonDeterminism` naming both keys, every later step of that attempt fails
/// too, and the run ends `failed` without retries — even if the workflow ignored the error.
///
/// # Outside a workflow
///
/// In a unit test or a script, the step simply runs its body once (no journal, no retries,
/// no timeout) and returns what it returns.
///
/// # The fn
///
/// `async fn name(args..) -> Result<T, E>`, where
/// - arguments may be borrowed (`&Card`, `&str`) and use any patterns; with `attempts > 1`
///   each attempt gets a clone of them, so they must be `Clone` (references are);
/// - `T: Serialize + DeserializeOwned` (it is journaled as JSON);
/// - `E: From<kagzi::Error> + Display`: `anyhow::Error` and `kagzi::Error` work; a custom
///   error type needs a `From<kagzi::Error>` conversion (keep the `kagzi::Error` as its
///   `source()` so the worker can still tell a lost lease apart). The body's own errors are
///   returned unchanged, after being recorded as the step's failure;
/// - the fn is free (no `self`), takes no `WorkflowContext` (it finds the run by itself),
///   and has no type or const generics (lifetimes are fine).
///
/// The generated fn is a plain `fn` with the same name and parameters that returns
/// `impl Future<Output = Result<T, E>> + Send`, so call sites read as if it were still the
/// `async fn`.
///
/// # Options
///
/// | option | default | meaning |
/// | --- | --- | --- |
/// | `name = "..."` | the fn name | the step name, the prefix of its keys |
/// | `attempts = N` | `1` | attempts in total inside one run attempt, including the first |
/// | `backoff = "100ms"` | `"100ms"` | delay before the first retry; doubles each retry, with jitter |
/// | `max_backoff = "10s"` | `"10s"` | longest delay between attempts |
/// | `timeout = "30s"` | none | time allowed for each attempt; a late attempt is dropped and counts as failed, and if it was the last the step fails with `kagzi::Error::StepTimedOut` |
///
/// Durations are whole numbers with a unit: `ms`, `s`, `m` or `h`.
#[proc_macro_attribute]
pub fn step(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let expanded = parse::options(args.into(), validate::STEP_OPTIONS)
        .and_then(|options| Ok((options, parse::item_fn(item.clone(), "step")?)))
        .and_then(|(options, func)| validate::step(options, func))
        .map(expand::step);
    emit(expanded, item)
}

/// The expansion, or on error the user's item unchanged (so the IDE keeps working) plus the
/// errors.
fn emit(
    expanded: syn::Result<proc_macro2::TokenStream>,
    item: proc_macro2::TokenStream,
) -> TokenStream {
    match expanded {
        Ok(tokens) => tokens.into(),
        Err(error) => {
            let mut tokens = item;
            error.to_compile_error().to_tokens(&mut tokens);
            tokens.into()
        }
    }
}

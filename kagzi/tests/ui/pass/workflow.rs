//! Every supported form of `#[workflow]`, registered and started with types.

use kagzi::{Client, RunHandle, Workflow, Worker, WorkflowContext, workflow};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Input {
    name: String,
}

#[derive(Serialize, Deserialize)]
pub struct Output {
    message: String,
}

/// The plain form: context, input, `anyhow::Result`.
#[workflow]
pub async fn greet(ctx: WorkflowContext, input: Input) -> anyhow::Result<Output> {
    let _ = ctx.run_id();
    Ok(Output {
        message: format!("Hello, {}!", input.name),
    })
}

/// Every option, a path to the context type, and a destructured input.
#[workflow(name = "greet-v2", queue = "greetings", retries = 3)]
async fn greet_with_options(
    ctx: kagzi::WorkflowContext,
    Input { name }: Input,
) -> kagzi::Result<String> {
    drop(ctx);
    Ok(name)
}

/// No input.
#[workflow]
async fn tick(_ctx: WorkflowContext) -> anyhow::Result<u64> {
    Ok(1)
}

#[derive(Debug, thiserror::Error)]
#[error("custom")]
struct Custom;

/// A tuple input, a custom error type and a raw identifier.
#[workflow]
async fn r#move(_ctx: WorkflowContext, (a, b): (u32, u32)) -> Result<u32, Custom> {
    if a > b { Err(Custom) } else { Ok(b - a) }
}

mod inner {
    use kagzi::{WorkflowContext, workflow};

    /// Visible outside its module.
    #[workflow]
    pub(crate) async fn nested(_ctx: WorkflowContext, n: i64) -> anyhow::Result<i64> {
        Ok(n)
    }
}

fn assert_workflow<W: Workflow>(_: W) {}

async fn usage(mut worker: Worker, client: Client) -> kagzi::Result<()> {
    worker
        .add(greet)
        .add(greet_with_options)
        .add(tick)
        .add(r#move)
        .add(inner::nested);
    // The string API keeps working beside it.
    worker.register("by-name", |_ctx: WorkflowContext, n: u32| async move {
        Ok(n + 1)
    });

    let handle: RunHandle<Output> = client
        .start(
            greet,
            Input {
                name: "World".to_owned(),
            },
        )
        .await?;
    let _ = handle.id();
    let output: Output = handle.result().await?;
    let _ = output.message;

    let handle = client
        .start(greet_with_options, Input { name: "x".to_owned() })
        .queue("elsewhere")
        .retries(1)
        .await?;
    let _: String = handle.result().await?;
    let _: u64 = client.start(tick, ()).await?.result().await?;
    let _: u32 = client.start(r#move, (1, 2)).await?.result().await?;
    let _: RunHandle<i64> = client.handle::<inner::nested>(handle.id());
    Ok(())
}

fn main() {
    assert_eq!(greet::NAME, "greet");
    assert_eq!(greet::QUEUE, None);
    assert_eq!(greet::RETRIES, 0);
    assert_eq!(greet_with_options::NAME, "greet-v2");
    assert_eq!(greet_with_options::QUEUE, Some("greetings"));
    assert_eq!(greet_with_options::RETRIES, 3);
    assert_eq!(r#move::NAME, "move");
    assert_workflow(tick);
    assert_workflow(inner::nested);
    let _ = usage;
}

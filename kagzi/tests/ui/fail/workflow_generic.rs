use kagzi::{WorkflowContext, workflow};

#[workflow]
async fn echo<T: serde::Serialize>(ctx: WorkflowContext, input: T) -> anyhow::Result<T> {
    let _ = ctx;
    Ok(input)
}

#[workflow]
async fn into(ctx: WorkflowContext, input: impl Into<String>) -> anyhow::Result<String> {
    let _ = ctx;
    Ok(input.into())
}

fn main() {}

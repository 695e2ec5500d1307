use kagzi::{WorkflowContext, workflow};

#[workflow(name = "", retries = "3")]
async fn greet(ctx: WorkflowContext, name: String) -> anyhow::Result<String> {
    let _ = ctx;
    Ok(name)
}

#[workflow(queue = "a", queue = "b", retries)]
async fn twice(ctx: WorkflowContext, name: String) -> anyhow::Result<String> {
    let _ = ctx;
    Ok(name)
}

fn main() {}

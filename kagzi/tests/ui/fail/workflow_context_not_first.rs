use kagzi::{WorkflowContext, workflow};

#[workflow]
async fn greet(name: String, ctx: WorkflowContext) -> anyhow::Result<String> {
    let _ = ctx;
    Ok(name)
}

#[workflow]
async fn borrowed(ctx: &WorkflowContext, name: String) -> anyhow::Result<String> {
    let _ = ctx;
    Ok(name)
}

fn main() {}

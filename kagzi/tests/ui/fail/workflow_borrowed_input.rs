use kagzi::{WorkflowContext, workflow};

#[workflow]
async fn greet(ctx: WorkflowContext, name: &str) -> anyhow::Result<String> {
    let _ = ctx;
    Ok(name.to_owned())
}

fn main() {}

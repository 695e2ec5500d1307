use kagzi::{WorkflowContext, workflow};

#[workflow(nmae = "greet")]
async fn greet(ctx: WorkflowContext, name: String) -> anyhow::Result<String> {
    let _ = ctx;
    Ok(name)
}

fn main() {}

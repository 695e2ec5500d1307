use kagzi::{WorkflowContext, workflow};

#[workflow]
async fn greet(ctx: WorkflowContext, first: String, last: String) -> anyhow::Result<String> {
    let _ = ctx;
    Ok(first + &last)
}

fn main() {}

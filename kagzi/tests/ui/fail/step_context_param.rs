use kagzi::{WorkflowContext, step};

#[step]
async fn charge(ctx: WorkflowContext, cents: u64) -> anyhow::Result<u64> {
    let _ = ctx;
    Ok(cents)
}

fn main() {}

use kagzi::{Client, WorkflowContext, workflow};

#[workflow]
async fn greet(ctx: WorkflowContext, name: String) -> anyhow::Result<String> {
    let _ = ctx;
    Ok(name)
}

async fn start(client: Client) -> kagzi::Result<()> {
    client.start(greet, 42).await?;
    Ok(())
}

fn main() {
    let _ = start;
}

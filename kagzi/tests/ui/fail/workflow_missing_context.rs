use kagzi::workflow;

#[workflow]
async fn nothing() -> anyhow::Result<()> {
    Ok(())
}

#[workflow]
async fn greet(name: String) -> anyhow::Result<String> {
    Ok(name)
}

fn main() {}

use kagzi::step;

#[step(retries = 3)]
async fn charge(cents: u64) -> anyhow::Result<u64> {
    Ok(cents)
}

fn main() {}

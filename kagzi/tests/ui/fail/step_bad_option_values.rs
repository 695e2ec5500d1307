use kagzi::step;

#[step(attempts = 0, timeout = "30", backoff = 100, max_backoff = "0s")]
async fn charge(cents: u64) -> anyhow::Result<u64> {
    Ok(cents)
}

fn main() {}

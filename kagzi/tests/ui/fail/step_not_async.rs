use kagzi::step;

#[step]
fn charge(cents: u64) -> anyhow::Result<u64> {
    Ok(cents)
}

fn main() {}

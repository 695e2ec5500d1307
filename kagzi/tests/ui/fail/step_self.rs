use kagzi::step;

struct Payments;

impl Payments {
    #[step]
    async fn charge(&self, cents: u64) -> anyhow::Result<u64> {
        Ok(cents)
    }
}

fn main() {}

use kagzi::step;

#[step]
async fn echo<T: serde::Serialize + Send>(value: T) -> anyhow::Result<()> {
    let _ = value;
    Ok(())
}

#[step]
async fn show(value: impl std::fmt::Display + Send) -> anyhow::Result<String> {
    Ok(value.to_string())
}

fn main() {}

use kagzi::step;

#[step]
async fn log(line: String) {
    let _ = line;
}

fn main() {}

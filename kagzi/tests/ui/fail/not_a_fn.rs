use kagzi::{step, workflow};

#[workflow]
struct Greet;

#[step]
const LIMIT: u32 = 3;

fn main() {}

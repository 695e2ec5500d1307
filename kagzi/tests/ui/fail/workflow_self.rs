use kagzi::{WorkflowContext, workflow};

struct Greeter;

impl Greeter {
    #[workflow]
    async fn greet(&self, ctx: WorkflowContext) -> anyhow::Result<String> {
        let _ = ctx;
        Ok(String::new())
    }
}

fn main() {}

use kagzi::{WorkflowContext, workflow};

#[workflow]
async fn nothing(ctx: WorkflowContext) {
    let _ = ctx;
}

#[workflow]
async fn plain(ctx: WorkflowContext) -> String {
    let _ = ctx;
    String::new()
}

fn main() {}

use cloacina::prelude::*;

#[workflow(name = "w")]
pub mod w {
    use super::*;

    #[task(dependencies = [])]
    pub async fn a(ctx: &mut Context<serde_json::Value>) -> Result<(), TaskError> {
        let _ = ctx;
        Ok(())
    }

    #[task(dependencies = [], trigger_rules = task_failed("a"))]
    pub async fn b(ctx: &mut Context<serde_json::Value>) -> Result<(), TaskError> {
        let _ = ctx;
        Ok(())
    }
}

fn main() {}

use cloacina::prelude::*;

#[workflow(name = "w")]
pub mod w {
    use super::*;

    #[task(dependencies = ["b"])]
    pub async fn a(ctx: &mut Context<serde_json::Value>) -> Result<(), TaskError> {
        let _ = ctx;
        Ok(())
    }

    #[task(dependencies = ["a"])]
    pub async fn b(ctx: &mut Context<serde_json::Value>) -> Result<(), TaskError> {
        let _ = ctx;
        Ok(())
    }
}

fn main() {}

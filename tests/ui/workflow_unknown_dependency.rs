use cloacina::prelude::*;

#[workflow(name = "w")]
pub mod w {
    use super::*;

    #[task(dependencies = [])]
    pub async fn extract(ctx: &mut Context<serde_json::Value>) -> Result<(), TaskError> {
        let _ = ctx;
        Ok(())
    }

    #[task(dependencies = ["extract", "transform"])]
    pub async fn load(ctx: &mut Context<serde_json::Value>) -> Result<(), TaskError> {
        let _ = ctx;
        Ok(())
    }
}

fn main() {}

use cloacina::prelude::*;

#[workflow(name = "w")]
pub mod w {
    use super::*;

    #[task(dependencies = [], retries = 3)]
    pub async fn only(ctx: &mut Context<serde_json::Value>) -> Result<(), TaskError> {
        let _ = ctx;
        Ok(())
    }
}

fn main() {}

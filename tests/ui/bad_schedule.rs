use cloacina::prelude::*;
use serde_json::Value;

#[workflow(name = "report", schedule = "every day at noon")]
pub mod report {
    use super::*;

    #[task]
    pub async fn build(_ctx: &mut Context<Value>) -> Result<(), TaskError> {
        Ok(())
    }
}

fn main() {}

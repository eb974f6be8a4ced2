use cloacina::prelude::*;

#[computation_graph(graph = {
    a(src) -> missing,
})]
pub mod g {
    pub fn a(src: Option<&u64>) -> u64 {
        src.copied().unwrap_or(0)
    }
}

fn main() {}

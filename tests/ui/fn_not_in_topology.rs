use cloacina::prelude::*;

#[computation_graph(graph = {
    a(src),
})]
pub mod g {
    pub fn a(src: Option<&u64>) -> u64 {
        helper(src.copied().unwrap_or(0))
    }
    pub fn helper(x: u64) -> u64 {
        x + 1
    }
}

fn main() {}

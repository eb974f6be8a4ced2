use cloacina::prelude::*;

#[computation_graph(graph = {
    left(x) -> merge,
    right(y) -> merge,
})]
pub mod g {
    pub fn left(x: Option<&u64>) -> u64 {
        x.copied().unwrap_or(0)
    }
    pub fn right(y: Option<&u64>) -> u64 {
        y.copied().unwrap_or(0)
    }
    pub fn merge(left: &u64) -> u64 {
        *left
    }
}

fn main() {}

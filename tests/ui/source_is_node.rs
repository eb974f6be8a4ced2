use cloacina::prelude::*;

#[computation_graph(graph = {
    a(b) -> b,
})]
pub mod g {
    pub fn a(b: Option<&u64>) -> u64 {
        b.copied().unwrap_or(0)
    }
    pub fn b(a: &u64) -> u64 {
        *a
    }
}

fn main() {}

use cloacina::prelude::*;

#[computation_graph(graph = {
    a(src) -> b,
    b -> a,
})]
pub mod g {
    pub fn a(src: Option<&u64>, b: &u64) -> u64 {
        src.copied().unwrap_or(0) + b
    }
    pub fn b(a: &u64) -> u64 {
        *a
    }
}

fn main() {}

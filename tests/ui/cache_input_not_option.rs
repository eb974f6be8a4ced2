use cloacina::prelude::*;

#[computation_graph(graph = {
    a(src) -> b,
})]
pub mod g {
    pub fn a(src: &u64) -> u64 {
        *src
    }
    pub fn b(a: &u64) -> u64 {
        *a
    }
}

fn main() {}
